"""Who a site is and where its data and state live, from the SuperNode's node config.

Simulation (Flower's simulation engine): ``context.node_config`` is
``{"partition-id": i, "num-partitions": K}``; the site is ``site-<i>`` of the config's split
(``fedsynth.common.data.cohort``), its state dir ``<run dir>/sites/site-<i>/state``.

Deployment (a real SuperNode): ``--node-config 'data-path="/data/brats" state-dir="/var/lib/
fedsynth" site-name="site-2" max-epsilon=10 max-delta=1e-5'``: ``data-path`` is a BraTS
cohort folder holding only this site's patients, ``state-dir`` persists the discriminator,
optimisers and privacy accountant. ``max-epsilon`` / ``max-delta`` are the site's OWN privacy
ceiling and REQUIRED: the privacy settings arrive from the server with each round, and the site
refuses to train for a server that asks for more. It refuses ``privacy.enabled=false`` unless
its node config says ``allow-no-dp=true``. ``forfeit-lost-state=true``: see
``fedsynth.client.state``. A simulated site has no node config of its own: the server's config
is its budget (fixed at its first round, like every site's; the site log says so).

The site's data is validated when its slice cache is built, before its first round
(``data.strict``: any invalid case is an error that fails the site's rounds; otherwise invalid
cases are skipped with a warning); a changed source file rebuilds (and revalidates) it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsynth.common.config import Config
from fedsynth.common.data import cohort as cohort_mod
from fedsynth.common.data.brats import discover_cases
from fedsynth.common.data.cache import SliceCache, build_slices, site_slices
from fedsynth.common.errors import ConfigError, DataError
from fedsynth.common.sites import site_index, site_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteIdentity:
    """Name and disk locations of one site.

    index: ``site-<index>`` as the server reports it; -1 when the name is not of that form.
    data_path: None in simulation (the config's cohort and split give the data).
    """

    name: str
    index: int
    state_dir: Path
    data_path: Path | None
    max_epsilon: float | None = None  # the site's own privacy ceiling (node config)
    max_delta: float | None = None
    forfeit_lost_state: bool = False  # node config forfeit-lost-state (fedsynth.client.state)
    allow_no_dp: bool = False  # node config allow-no-dp: may train without DP if asked

    @property
    def deployed(self) -> bool:
        """A real SuperNode with its own data folder (not a simulated partition)."""
        return self.data_path is not None


def identify_site(node_config: dict[str, Any], run_dir: str | Path | None) -> SiteIdentity:
    """The site of a SuperNode from its node config (see module docstring)."""
    if "data-path" in node_config:
        return _deployed_site(node_config)
    if "partition-id" not in node_config:
        raise ConfigError(
            "node-config",
            f"expected 'partition-id' (simulation) or 'data-path' (deployment), got {sorted(node_config)}",
        )
    index = int(node_config["partition-id"])
    name = site_name(index)
    if not run_dir:
        raise ConfigError(
            "run-dir", "the server sent no run directory for the simulated sites' state"
        )
    return SiteIdentity(name, index, Path(run_dir) / "sites" / name / "state", None)


def _deployed_site(node_config: dict[str, Any]) -> SiteIdentity:
    data_path = Path(str(node_config["data-path"])).expanduser()
    name = str(node_config.get("site-name") or data_path.name)
    parsed = site_index(name)
    default_state = Path("~/.local/state/fedsynth").expanduser() / name
    state_dir = Path(str(node_config.get("state-dir") or default_state)).expanduser()
    index = -1 if parsed is None else parsed
    return SiteIdentity(
        name,
        index,
        state_dir,
        data_path,
        max_epsilon=_positive(node_config, "max-epsilon"),
        max_delta=_positive(node_config, "max-delta"),
        forfeit_lost_state=_flag(node_config, "forfeit-lost-state"),
        allow_no_dp=_flag(node_config, "allow-no-dp"),
    )


def _flag(node_config: dict[str, Any], key: str) -> bool:
    value = node_config.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ConfigError(f"node-config {key}", f"must be true or false, got {value!r}")
    return text in ("true", "1")


def _positive(node_config: dict[str, Any], key: str) -> float | None:
    if key not in node_config:
        return None
    try:
        value = float(node_config[key])
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise ConfigError(
            f"node-config {key}", f"must be a positive number, got {node_config[key]!r}"
        )
    return value


def check_site_policy(cfg: Config, site: SiteIdentity) -> None:
    """Refuse a server config the site's own node config does not allow: no ceiling set
    (deployment), more privacy spent than the ceiling, no DP without ``allow-no-dp=true``,
    or the insecure reproducible noise (deployment)."""
    p = cfg.privacy
    if site.deployed:
        missing = [k for k, v in (("max-epsilon", site.max_epsilon), ("max-delta", site.max_delta))
                   if v is None]  # fmt: skip
        if missing:
            raise ConfigError(
                f"node-config {missing[0]}",
                f"site {site.name} refuses to train without its own privacy ceiling: add "
                "max-epsilon=<epsilon> max-delta=<delta> to the SuperNode's --node-config",
            )
        if p.insecure_reproducible_noise:
            raise ConfigError(
                "privacy.insecure_reproducible_noise",
                f"site {site.name} refuses: derives the DP noise from the public seed, so the "
                "server could replay the site's training and remove the noise (simulation only)",
            )
    if not p.enabled:
        if site.deployed and not site.allow_no_dp:
            raise ConfigError(
                "privacy.enabled",
                f"site {site.name} requires differential privacy but the server's config "
                "disables it; a site that accepts that sets allow-no-dp=true in its node config",
            )
        return
    if site.max_epsilon is not None and p.target_epsilon > site.max_epsilon:
        raise ConfigError(
            "privacy.target_epsilon",
            f"the server asks for {p.target_epsilon:g}, above site {site.name}'s "
            f"max-epsilon={site.max_epsilon:g}",
        )
    if site.max_delta is not None and p.delta > site.max_delta:
        raise ConfigError(
            "privacy.delta",
            f"the server asks for {p.delta:g}, above site {site.name}'s max-delta={site.max_delta:g}",
        )


def load_site_data(cfg: Config, site: SiteIdentity) -> SliceCache:
    """The site's slice cache, built on first use; its cases are validated as they are read.

    With ``data.strict`` an invalid case is a DataError naming every bad file (the site's
    rounds then fail with that message in the server log); otherwise it is skipped.
    """
    if site.data_path is None:
        return site_slices(cfg, simulated_subjects(cfg, site), site.name)
    # Deployment: the folder holds only this site's patients; no split, no manifest written.
    # The slice cache is derived patient data: it stays in the site's own state dir, not
    # where the server's config (data.cache_dir) would put it.
    subjects = [c.case_id for c in discover_cases(site.data_path)]
    return build_slices(
        cohort_dir=site.data_path,
        subjects=subjects,
        name=site.name,
        preprocess=cfg.preprocess,
        cache_root=site.state_dir / "cache" / "slices",
        strict=cfg.data.strict,
        labels_optional=cfg.data.labels_optional,
    )


def simulated_subjects(cfg: Config, site: SiteIdentity) -> list[str]:
    """Subject ids of a simulated site: its part of the config's split."""
    cohort_dir = cohort_mod.resolve_cohort(cfg)
    split = cohort_mod.load_split(cohort_dir)
    if site.name not in split.sites:
        raise DataError(
            cohort_dir / "manifest.csv",
            f"the split has no {site.name} (sites: {', '.join(sorted(split.sites))}); "
            "a simulation runs split.sites sites",
        )
    return list(split.sites[site.name])
