"""Splitting a cohort into held-out test patients and K training sites.

The test split is drawn first and never trains anyone. It is stratified by tumour status
(so it contains tumour cases whenever the cohort has them) and, when sites are known,
drawn from every site in proportion to its size. The remaining patients go to training
sites by policy:

- ``iid``: shuffled and dealt round-robin (site sizes differ by at most one);
- ``dirichlet``: site shares drawn from Dirichlet(alpha): quantity skew, smaller alpha
  means more skew; every site gets at least ``DIRICHLET_MIN_PER_SITE`` patients;
- ``by-site``: the cohort's own sites (the phantom's scanner sites, or a ``subject,site``
  CSV), mapped in natural order to site-0, site-1, ...

Everything is a function of the subject set, the policy settings and ``seed``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsynth.common.config import SplitConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.sites import site_name

TEST = "test"
DIRICHLET_MIN_PER_SITE = 2


@dataclass(frozen=True)
class Split:
    """Held-out test subjects and the training subjects of each site (ids sorted)."""

    test: list[str]
    sites: dict[str, list[str]] = field(default_factory=dict)  # "site-0", ... -> subject ids

    def assignment(self) -> dict[str, str]:
        """subject id -> "test" or its site name."""
        out = {s: TEST for s in self.test}
        for site, subjects in self.sites.items():
            out.update({s: site for s in subjects})
        return out


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key that puts scanner-2 before scanner-10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def make_split(
    subjects: Sequence[str],
    cfg: SplitConfig,
    *,
    has_tumour: Mapping[str, bool] | None = None,
    site_of: Mapping[str, str] | None = None,
) -> Split:
    """Split ``subjects`` by ``cfg``; deterministic for the subject set and ``cfg.seed``.

    has_tumour: subject -> True if its label map has tumour (stratifies the test split).
    site_of: subject -> original site name; required for policy ``by-site``.
    Raises ConfigError (naming the split.* key) when the cohort is too small for the policy.
    """
    ids = sorted(set(subjects))
    if len(ids) != len(subjects):
        raise ConfigError("split", "subject ids must be unique")
    if cfg.policy == "by-site":
        site_of = _check_sites(ids, cfg, site_of)
    rng = np.random.default_rng([cfg.seed, 17])
    test = _draw_test(ids, cfg, rng, has_tumour or {}, site_of if cfg.policy == "by-site" else None)
    held_out = set(test)
    train = [s for s in ids if s not in held_out]
    if cfg.policy == "iid":
        groups = _iid(train, cfg, rng)
    elif cfg.policy == "dirichlet":
        groups = _dirichlet(train, cfg, rng)
    elif cfg.policy == "by-site":
        groups = _by_site(train, cfg, site_of)  # type: ignore[arg-type]
    else:
        raise ConfigError(
            "split.policy", f"must be one of iid, dirichlet, by-site; got {cfg.policy!r}"
        )
    return Split(
        test=sorted(test, key=natural_key),
        sites={site_name(k): sorted(g, key=natural_key) for k, g in enumerate(groups)},
    )


def _check_sites(
    ids: list[str], cfg: SplitConfig, site_of: Mapping[str, str] | None
) -> dict[str, str]:
    missing = [s for s in ids if not (site_of or {}).get(s)]
    if missing:
        raise ConfigError(
            "split.site_csv",
            f"policy by-site needs a site for every subject; none for {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (give a CSV with columns subject,site, "
            "or fill scanner_site in the cohort's manifest.csv)",
        )
    names = sorted({site_of[s] for s in ids}, key=natural_key)  # type: ignore[index]
    if len(names) != cfg.sites:
        raise ConfigError(
            "split.sites",
            f"policy by-site: the cohort has {len(names)} sites ({', '.join(names)}); "
            f"set split.sites={len(names)}",
        )
    return {s: site_of[s] for s in ids}  # type: ignore[index]


def _draw_test(
    ids: list[str],
    cfg: SplitConfig,
    rng: np.random.Generator,
    has_tumour: Mapping[str, bool],
    site_of: Mapping[str, str] | None,
) -> list[str]:
    """Hold out round(test_fraction * N) >= 1 subjects, stratified by tumour status."""
    n_test = max(1, int(round(cfg.test_fraction * len(ids))))
    if n_test >= len(ids):
        raise ConfigError(
            "split.test_fraction",
            f"{cfg.test_fraction} of {len(ids)} subjects leaves nobody to train on",
        )
    tumour = [s for s in ids if has_tumour.get(s, False)]
    healthy = [s for s in ids if not has_tumour.get(s, False)]
    n_tumour = int(round(n_test * len(tumour) / len(ids)))
    if tumour:
        n_tumour = max(n_tumour, 1)  # the test split must contain tumour cases
    n_tumour = min(n_tumour, len(tumour), n_test)
    n_healthy = min(n_test - n_tumour, len(healthy))
    n_tumour = n_test - n_healthy  # healthy stratum too small: take the rest from tumours
    return _proportional(tumour, n_tumour, rng, site_of) + _proportional(
        healthy, n_healthy, rng, site_of
    )


def _proportional(
    pool: list[str], n: int, rng: np.random.Generator, site_of: Mapping[str, str] | None
) -> list[str]:
    """Draw n from pool at random; with sites, each site gives in proportion to its size.

    Systematic sampling: inside each site the shuffled members get keys (rank + 0.5) / size,
    and the n smallest keys win, so a site of 10 gives about twice what a site of 5 gives.
    """
    order = [pool[i] for i in rng.permutation(len(pool))]
    if site_of is None:
        return order[:n]
    ranks: dict[str, int] = {}
    sizes = {site: sum(site_of[s] == site for s in pool) for site in {site_of[s] for s in pool}}
    keys = []
    for s in order:
        r = ranks.get(site_of[s], 0)
        ranks[site_of[s]] = r + 1
        keys.append((r + 0.5) / sizes[site_of[s]] + 1e-9 * rng.random())
    return [order[i] for i in np.argsort(keys, kind="stable")[:n]]


def _too_few(cfg: SplitConfig, n_train: int, need: int) -> ConfigError:
    return ConfigError(
        "split.sites",
        f"policy {cfg.policy}: {n_train} training subjects cannot give {cfg.sites} sites "
        f"{need} each; lower split.sites or split.test_fraction, or use more subjects",
    )


def _iid(train: list[str], cfg: SplitConfig, rng: np.random.Generator) -> list[list[str]]:
    if len(train) < cfg.sites:
        raise _too_few(cfg, len(train), 1)
    order = [train[i] for i in rng.permutation(len(train))]
    return [order[k :: cfg.sites] for k in range(cfg.sites)]


def _dirichlet(train: list[str], cfg: SplitConfig, rng: np.random.Generator) -> list[list[str]]:
    spare = len(train) - DIRICHLET_MIN_PER_SITE * cfg.sites
    if spare < 0:
        raise _too_few(cfg, len(train), DIRICHLET_MIN_PER_SITE)
    shares = rng.dirichlet(np.full(cfg.sites, cfg.alpha))
    sizes = DIRICHLET_MIN_PER_SITE + rng.multinomial(spare, shares)
    order = [train[i] for i in rng.permutation(len(train))]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [order[bounds[k] : bounds[k + 1]] for k in range(cfg.sites)]


def _by_site(train: list[str], cfg: SplitConfig, site_of: Mapping[str, str]) -> list[list[str]]:
    names = sorted(set(site_of.values()), key=natural_key)
    groups = [[s for s in train if site_of[s] == name] for name in names]
    empty = [name for name, g in zip(names, groups, strict=True) if not g]
    if empty:
        raise ConfigError(
            "split.test_fraction",
            f"policy by-site: no training subjects left at {', '.join(empty)} after the test "
            "split; lower split.test_fraction or use more subjects",
        )
    return groups
