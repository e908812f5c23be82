"""Site names: formatted and parsed in one place (fedsynth.common.sites)."""

from fedsynth.common.sites import site_index, site_name


def test_site_name_and_index_round_trip():
    for k in (0, 1, 12):
        assert site_index(site_name(k)) == k
    assert site_name(3) == "site-3"


def test_other_names_have_no_index():
    for name in ("test", "central", "all", "site-", "site-x", "site-1 ", "hospital-2", "site-2\n"):
        assert site_index(name) is None, name
