"""The layout of every fedsynth output folder: the one module that knows its file names.

Every command that writes or reads a run folder asks this module for the path; no other
module spells ``"config.yaml"``, ``"privacy.json"`` or ``"checkpoints"``.

A **training run** (``fedsynth train``: central; ``fedsynth simulate`` / ``flwr run``:
federated), class ``RunDir``::

    RUN_DIR/
      config.yaml          the resolved configuration (what was run); read back by resume,
                           synthesis, audit and report
      metrics.jsonl        one JSON line per evaluation (central) or per round and site
                           (federated: "kind" "site" or "round"); non-finite numbers as null
      replies.jsonl        federated: per round and site, what crossed the network
      privacy.json         what the accountants recorded (fedsynth.common.privacy.report)
      skipped_cases.json   real cohorts with data.strict=false: the cases validation left
                           out of the split, with their problems (cohort.record_skipped)
      server_state.json    federated only: the server's commit point (resume); its presence
                           marks a federated run
      checkpoints/
        generator_<step>.safetensors   the generator after <step> local steps
        release_<step>.safetensors     federated with federation.release_ema > 0: the EMA of
                                       the aggregates over rounds (what is released)
        state_<step>.safetensors       central only: everything needed to resume
        latest.json                    names the newest complete checkpoint
        generator.safetensors          a copy of the newest generator: what users, synthesis,
                                       audit and the sweep load (written atomically)
      samples/step_<step>.png          label map | real | fake per contrast
      plots/losses.png, quality.png    training curves (central)
      tensorboard/         TensorBoard event files (fedsynth.common.tracking): losses (central),
                           epsilon (per site when federated), held-out quality, sample grids
      synthetic/           a synthetic cohort made from this run (sweep)
      benchmark/           the segmentation benchmark of this run (``BENCHMARK_DIR``)
      audit/               the privacy audit of this run (``AUDIT_DIR``)
      report.html          the HTML report

A **benchmark** folder (RUN_DIR/benchmark): ``config.yaml``, results tables, ``synthetic/``
when it synthesises its own cohort, ``work/`` (per-arm scratch).

A **sweep** folder (``fedsynth privacy-sweep``), class ``SweepDir``: ``config.yaml`` (base
config), ``baselines/`` (real-data arms, run once), ``eps-<label>/`` (one training run per
budget, each with ``done.json`` when finished), ``sweep.csv``, ``sweep.md``, ``plots/``,
``report.html``.

A **demo** folder (``fedsynth demo``), class ``DemoDir``: ``config.yaml``,
``stages/<stage>.json`` (a finished stage), ``cohort_preview.png``, ``pretrain/`` (a
pre-training folder, when pretrain.enabled), ``federated/`` (a training run) and ``synthetic/`` (its synthetic cohort).

A **pre-training** folder (``fedsynth pretrain``): a training run (``config.yaml``,
``metrics.jsonl``, ``samples/``, ``plots/``) plus ``PUBLIC_DATA_FILE`` (which public cohort,
its manifest hash, the disjointness check) and ``INIT_FILE`` (the EMA generator and the
discriminator with that provenance: what ``model.init`` names).

A **site state** folder (a SuperNode's ``state-dir``, never leaves the site):
``SITE_TRAINER_STATE`` (G, D, optimisers, accountant, RNGs, the DP noise secret),
``SITE_LAST_REPLY``, ``SITE_RECORD`` (first round, fixed budget) and ``SITE_LOG`` (the site's
own training log); see ``fedsynth.client.state``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedsynth.common.config import Config, config_from_dict, config_to_yaml
from fedsynth.common.errors import CheckpointError, ConfigError, OutputExistsError
from fedsynth.common.io.atomic import (
    append_jsonl,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    mark_output,
    remove_output,
)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
REPLIES_FILE = "replies.jsonl"
PRIVACY_FILE = "privacy.json"
SKIPPED_CASES_FILE = "skipped_cases.json"
SERVER_STATE_FILE = "server_state.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest.json"
GENERATOR_FILE = "generator.safetensors"
SAMPLES_DIR = "samples"
PLOTS_DIR = "plots"
SYNTHETIC_DIR = "synthetic"
BENCHMARK_DIR = "benchmark"
AUDIT_DIR = "audit"
REPORT_FILE = "report.html"
TENSORBOARD_DIR = "tensorboard"  # event files, here and in each benchmark arm's folder
DONE_FILE = "done.json"  # a finished sweep budget or baseline
INIT_FILE = "init.safetensors"  # pre-training: starting weights for model.init
PUBLIC_DATA_FILE = "public.json"  # pre-training: provenance of the public data

SITE_TRAINER_STATE = "trainer.safetensors"  # in a site's state dir
SITE_LAST_REPLY = "last_reply.safetensors"  # the last reply sent, to resend on a repeat
SITE_RECORD = "site.json"  # first round, whether a state was saved, the budget fixed then
SITE_LOG = "log.jsonl"  # losses, patients sampled, time per round: never leave the site


class RunDir:
    """Paths, writers and readers of one training run directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / CONFIG_FILE
        self.metrics = self.root / METRICS_FILE
        self.replies = self.root / REPLIES_FILE
        self.privacy = self.root / PRIVACY_FILE
        self.server_state = self.root / SERVER_STATE_FILE
        self.checkpoints = self.root / CHECKPOINTS_DIR
        self.latest = self.checkpoints / LATEST_FILE
        self.generator = self.checkpoints / GENERATOR_FILE
        self.samples = self.root / SAMPLES_DIR
        self.plots = self.root / PLOTS_DIR
        self.synthetic = self.root / SYNTHETIC_DIR
        self.benchmark = self.root / BENCHMARK_DIR
        self.audit = self.root / AUDIT_DIR
        self.report = self.root / REPORT_FILE
        self.tensorboard = self.root / TENSORBOARD_DIR

    # -- writing ---------------------------------------------------------------------------

    def create(self, cfg: Config, overwrite: bool = False) -> None:
        """Start a fresh run; OutputExistsError if the folder has content and not ``overwrite``."""
        clear_for_new_output(self.root, overwrite)
        mark_output(self.root)
        for d in (self.checkpoints, self.samples, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        self.write_config(cfg)

    def write_config(self, cfg: Config) -> None:
        atomic_write_text(self.config, config_to_yaml(cfg))

    def generator_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"generator_{step:07d}.safetensors"

    def release_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"release_{step:07d}.safetensors"

    def state_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"state_{step:07d}.safetensors"

    def sample_png(self, step: int) -> Path:
        return self.samples / f"step_{step:07d}.png"

    def mark_latest(self, step: int, **extra: Any) -> None:
        """Point latest.json at a step whose checkpoints are completely written."""
        atomic_write_json(
            self.latest,
            {
                "step": step,
                "generator": self.generator_checkpoint(step).name,
                "state": self.state_checkpoint(step).name,
                **extra,
            },
            durable=True,  # resume reads it after a crash
        )

    def publish_generator(self, checkpoint: Path) -> Path:
        """Copy ``checkpoint`` to checkpoints/generator.safetensors atomically; return the copy."""
        with atomic_path(self.generator, durable=True) as tmp:
            tmp.write_bytes(Path(checkpoint).read_bytes())
        return self.generator

    def append_metrics(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics, finite_json(record))

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop lines written after the checkpoint we restart from."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    # -- reading ---------------------------------------------------------------------------

    def read_config(self) -> Config:
        """config.yaml as a Config; ConfigError naming the file if absent or invalid."""
        if not self.config.is_file():
            raise ConfigError(
                str(self.config), "missing: RUN_DIR must be a fedsynth training run directory"
            )
        try:
            return config_from_dict(OmegaConf.to_container(OmegaConf.load(self.config)))  # type: ignore[arg-type]
        except ConfigError as e:
            raise ConfigError(str(self.config), f"invalid run config: {e}") from e
        except Exception as e:  # YAML errors come in several types
            raise ConfigError(str(self.config), f"unreadable run config: {e}") from e

    def read_privacy(self) -> dict[str, Any] | None:
        """privacy.json as the trainer or server wrote it; None when absent or unreadable."""
        return read_json(self.privacy)

    def read_server_state(self) -> dict[str, Any] | None:
        return read_json(self.server_state)

    def is_federated(self) -> bool:
        """A run the federated server wrote (only it writes server_state.json)."""
        return self.server_state.is_file()

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every line of metrics.jsonl; a line cut by a crash is skipped."""
        if not self.metrics.is_file():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def latest_step(self) -> int:
        """Step of the newest complete checkpoint; CheckpointError if there is none."""
        try:
            return int(json.loads(self.latest.read_text())["step"])
        except FileNotFoundError as e:
            raise CheckpointError(self.latest, "no checkpoint to resume from") from e
        except (ValueError, KeyError) as e:
            raise CheckpointError(self.latest, f"unreadable: {e}") from e

    def released_generator(self) -> Path:
        """The generator a run releases: checkpoints/generator.safetensors, else the checkpoint
        named by latest.json, else the newest generator_*.safetensors."""
        if self.generator.is_file():
            return self.generator
        try:
            named = self.checkpoints / json.loads(self.latest.read_text())["generator"]
            if named.is_file():
                return named
        except (OSError, ValueError, KeyError, TypeError):
            pass
        found = sorted(self.checkpoints.glob("generator_*.safetensors"))
        if not found:
            raise CheckpointError(self.checkpoints, "no generator checkpoint in this run directory")
        return found[-1]


def find_run_dir(checkpoint: Path) -> Path | None:
    """The run directory holding ``checkpoint``: the nearest parent (up to two levels) with a
    config.yaml."""
    for parent in list(Path(checkpoint).resolve().parents)[:2]:
        if (parent / CONFIG_FILE).is_file():
            return parent
    return None


class SweepDir:
    """Paths of a privacy-sweep folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / CONFIG_FILE
        self.baselines = self.root / "baselines"
        self.table = self.root / "sweep.csv"
        self.markdown = self.root / "sweep.md"
        self.plots = self.root / PLOTS_DIR
        self.report = self.root / REPORT_FILE

    def budget(self, label: str) -> RunDir:
        """The training run of one budget (label: "inf", "50", "10", ...)."""
        return RunDir(self.root / f"eps-{label}")

    @staticmethod
    def done(folder: str | Path) -> Path:
        """The marker of a finished budget or baseline folder."""
        return Path(folder) / DONE_FILE


class DemoDir:
    """Paths of a demo folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / CONFIG_FILE
        self.pretrain = RunDir(self.root / "pretrain")  # public pre-training (INIT_FILE)
        self.federated = RunDir(self.root / "federated")
        self.synthetic = self.root / SYNTHETIC_DIR
        self.preview = self.root / "cohort_preview.png"

    def stage_marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"


def clear_for_new_output(root: Path, overwrite: bool) -> None:
    """Make ``root`` ready for a new output: OutputExistsError if it has content, unless
    ``overwrite`` and fedsynth made it (``OUTPUT_MARKER``: then it is removed;
    ForeignFolderError naming it otherwise). Validate the config before calling this."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise OutputExistsError(root)
        remove_output(root)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of a run folder; None when absent or unreadable (callers say what is missing)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def finite_json(obj: Any) -> Any:
    """JSON has no inf/nan: write them as null (epsilon null = no DP, see privacy.json)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    return obj
