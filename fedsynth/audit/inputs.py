"""What the audit reads from a run directory: its config, its released generator, the slices
of the patients that trained it (members, per site) and of the held-out patients (non-members).

Members follow the run's config and split: a central run trained on every site's training
patients (train.site "all") or on one site's; a federated run (``server_state.json``
present) on the sites named in its ``privacy.json`` (every split site if that is absent).
Non-members are ``split.test``: patients no site ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.config import Config
from fedsynth.common.data.cache import site_slices
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.errors import CheckpointError, ConfigError, DataError
from fedsynth.common.rundir import RunDir
from fedsynth.synthesis.generator_io import load_generator


@dataclass
class AuditInputs:
    """cfg: the run's config. generator: fedsynth.synthesis.generator_io.LoadedGenerator.
    members: site -> SliceCache of that site's training patients. heldout: SliceCache of
    split.test. federated: the run came from ``fedsynth simulate``."""

    run_dir: Path
    cfg: Config
    generator: Any
    members: dict[str, Any]
    heldout: Any
    federated: bool
    privacy: dict[str, Any] = field(default_factory=dict)


def read_run_config(run_dir: Path) -> Config:
    """The run's config.yaml as a Config; ConfigError naming the file if absent or invalid."""
    return RunDir(run_dir).read_config()


def read_privacy(run_dir: Path) -> dict[str, Any]:
    """privacy.json as written by the trainer or server; {} when absent or unreadable."""
    return RunDir(run_dir).read_privacy() or {}


def released_generator(run_dir: Path) -> Path:
    """The generator a run releases (``RunDir.released_generator``)."""
    return RunDir(run_dir).released_generator()


def is_federated(run_dir: Path) -> bool:
    return RunDir(run_dir).is_federated()


def trained_sites(
    cfg: Config, sites: dict[str, list[str]], federated: bool, privacy: dict[str, Any]
) -> list[str]:
    """Names of the split sites whose training patients trained the generator."""
    if federated:
        named = sorted(s for s in privacy.get("sites", {}) if s in sites)
        return named or sorted(sites)
    if cfg.train.site == "all":
        return sorted(sites)
    if cfg.train.site not in sites:
        raise ConfigError(
            "train.site", f"{cfg.train.site!r} is not in the split; sites: {', '.join(sites)}"
        )
    return [cfg.train.site]


def load_audit_inputs(run_dir: str | Path) -> AuditInputs:
    """Everything the audit needs, from the run's files and its cohort's slice caches."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(run_dir, "run directory does not exist")
    cfg = read_run_config(run_dir)
    privacy = read_privacy(run_dir)
    federated = is_federated(run_dir)
    generator = load_generator(released_generator(run_dir), fallback=cfg)
    split = load_split(resolve_cohort(cfg))
    if not split.test:
        raise DataError(run_dir, "the run's split has no held-out (test) patients to compare with")
    members = {
        site: site_slices(cfg, list(split.sites[site]), site)
        for site in trained_sites(cfg, split.sites, federated, privacy)
    }
    heldout = site_slices(cfg, list(split.test), "test")
    if generator.image_size != heldout.image_size:
        raise CheckpointError(
            generator.path,
            f"generator makes {generator.image_size}-px slices but the run's cache has "
            f"{heldout.image_size}-px slices (preprocess.image_size changed?)",
        )
    return AuditInputs(run_dir, cfg, generator, members, heldout, federated, privacy)
