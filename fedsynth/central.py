"""The centralised trainer behind ``fedsynth train``: pooled training patients, one trainer.

Writes a training run directory (layout: fedsynth.common.rundir) and resumes from its latest
complete checkpoint. An app like ``fedsynth.simulation``: only the CLI and tests import it.
Every evaluation interval: held-out image quality, a metrics line, plots; every checkpoint
interval: generator + full state, privacy.json and the released copy
checkpoints/generator.safetensors; every sample interval: the sample grid. The metrics lines
and sample grids also go to TensorBoard (RUN_DIR/tensorboard, fedsynth.common.tracking).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fedsynth.common.config import Config, config_from_dict
from fedsynth.common.data.cache import site_slices
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.data.datasets import fixed_eval_slices
from fedsynth.common.errors import CheckpointError, ConfigError, TrainingDivergedError
from fedsynth.common.gan.evaluation import eval_indices, evaluate_quality, save_sample_grid
from fedsynth.common.gan.init import public_pretraining
from fedsynth.common.gan.plots import plot_metrics
from fedsynth.common.gan.trainer import LocalTrainer, StepReport
from fedsynth.common.io.checkpoints import save_checkpoint
from fedsynth.common.models.registry import architecture_hash
from fedsynth.common.privacy.binding import PRIVACY_KEY, checkpoint_summary
from fedsynth.common.privacy.report import describe_epsilon, write_privacy_json
from fedsynth.common.progress import progress_bar
from fedsynth.common.rundir import RunDir
from fedsynth.common.tracking import Tracker, tensorboard_dir, training_scalars

log = logging.getLogger(__name__)
SITE = "central"


@dataclass
class CentralData:
    train: Any  # SliceCache of the training patients
    test: Any  # SliceCache of the held-out patients (split.test)


def training_subjects(cfg: Config, sites: dict[str, list[str]]) -> list[str]:
    """Subjects of every site (train.site "all") or of one site; ConfigError for unknown."""
    if cfg.train.site == "all":
        return [s for name in sorted(sites) for s in sites[name]]
    if cfg.train.site not in sites:
        raise ConfigError(
            "train.site",
            f"{cfg.train.site!r} is not in the split; sites: {', '.join(sorted(sites))}",
        )
    return list(sites[cfg.train.site])


def load_central_data(cfg: Config) -> CentralData:
    """Slice caches of the training part of the cohort and of its held-out test split."""
    split = load_split(resolve_cohort(cfg))
    subjects = training_subjects(cfg, split.sites)
    name = "train-all" if cfg.train.site == "all" else f"train-{cfg.train.site}"
    return CentralData(site_slices(cfg, subjects, name), site_slices(cfg, list(split.test), "test"))


class CentralRun:
    """One central training run bound to a run directory (fresh or resumed)."""

    def __init__(self, cfg: Config, run: RunDir, data: CentralData, device: str | None = None):
        self.cfg, self.run, self.data = cfg, run, data
        self.trainer = LocalTrainer(
            cfg, data.train, planned_steps=cfg.train.steps, site=SITE, device=device
        )
        self.eval_idx = eval_indices(data.test, cfg.train.eval_slices, cfg.seed)
        self.sample_idx = fixed_eval_slices(data.test, cfg.train.sample_slices, cfg.seed)
        self.tracker = Tracker(None)  # opened by train(), once the starting step is known
        self.pretrained_on = public_pretraining(cfg.model.init, {})  # named in privacy.json

    def resume(self) -> int:
        step = self.run.latest_step()
        self.trainer.load(self.run.state_checkpoint(step))
        self.run.truncate_metrics(step)
        return step

    def train(self, progress: bool = True) -> StepReport | None:
        """Train until train.steps, evaluating/checkpointing on the configured intervals."""
        t = self.cfg.train
        last: StepReport | None = None
        start = time.perf_counter()
        done = self.trainer.steps_done
        # On resume, TensorBoard hides what a killed attempt logged after the checkpoint.
        self.tracker = Tracker(
            tensorboard_dir(self.run.root), purge_step=done + 1 if done else None
        )
        bar = progress_bar(total=t.steps, initial=done, desc="train", unit="step", leave=True,
                           enabled=progress)  # fmt: skip
        with self.tracker, bar:
            while self.trainer.steps_done < t.steps:
                n = _steps_to_next_event(self.trainer.steps_done, t)
                last = self.trainer.train_steps(n, progress=progress)
                self._after_steps(last, time.perf_counter() - start)
                bar.update(n)
        return last

    def _after_steps(self, report: StepReport, elapsed: float) -> None:
        step, t = self.trainer.steps_done, self.cfg.train
        self.check_finite(step)
        final = step >= t.steps
        if step % t.eval_every == 0 or final:
            self.evaluate(report, elapsed)
        if step % t.sample_every == 0 or final:
            png = save_sample_grid(
                self.trainer.generate, self.data.test, self.sample_idx, self.run.sample_png(step),
                title=f"step {step}, {describe_epsilon(self.trainer.epsilon, self.cfg.privacy.delta)}",
            )  # fmt: skip
            self.tracker.image("samples", png, step)
        if step % t.checkpoint_every == 0 or final:
            self.checkpoint()

    def check_finite(self, step: int) -> None:
        """TrainingDivergedError before anything of a step with NaN/inf weights is written:
        the previous checkpoint stays the latest (and the released generator)."""
        bad = [
            k
            for k, v in self.trainer.generator.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if not bad:
            return
        try:
            last = f"the last good checkpoint is step {self.run.latest_step()} ({self.run.latest})"
        except CheckpointError:
            last = "no checkpoint was written before"
        raise TrainingDivergedError(
            f"{self.run.root}: training diverged, the generator has non-finite weights after "
            f"step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); nothing of "
            f"this step was saved and {last}. Lower train.lr (now {self.cfg.train.lr:g}) and "
            "resume or restart"
        )

    def evaluate(self, report: StepReport, elapsed: float) -> dict[str, Any]:
        q = evaluate_quality(self.trainer.generate, self.data.test, self.eval_idx)
        record = {
            "step": self.trainer.steps_done,
            "loss_d": report.loss_d,
            "loss_g_adv": report.loss_g_adv,
            "loss_g_l1": report.loss_g_l1,
            "epsilon": self.trainer.epsilon,
            "slices_per_s": report.slices / report.seconds if report.seconds > 0 else math.nan,
            "seconds": elapsed,
            **q,
        }
        self.run.append_metrics(record)
        self.tracker.scalars(training_scalars(record), record["step"])
        self.tracker.flush()
        log.info(
            "step %d: D %.3f, G adv %.3f, L1 %.3f, held-out PSNR %.2f dB, %s",
            record["step"], report.loss_d, report.loss_g_adv, report.loss_g_l1,
            q["mean"].get("psnr", math.nan), describe_epsilon(record["epsilon"], self.cfg.privacy.delta),
        )  # fmt: skip
        return record

    def checkpoint(self) -> None:
        """privacy.json, then the generator (for synthesis, bound to that record by its digest,
        see fedsynth.common.privacy.binding) and the full state (for resume), then latest.json:
        a crash in between leaves the previous checkpoint as the latest. Last, the released
        copy checkpoints/generator.safetensors (atomic: old or new, never torn)."""
        step = self.trainer.steps_done
        report = self.write_privacy()
        generator = save_generator_checkpoint(
            self.trainer, self.run.generator_checkpoint(step), privacy=checkpoint_summary(report)
        )
        self.trainer.save(self.run.state_checkpoint(step))
        plot_metrics(self.run.read_metrics(), self.run.plots)  # ~1 s: with each checkpoint
        self.run.mark_latest(step)
        self.run.publish_generator(generator)

    def write_privacy(self) -> dict[str, Any]:
        p = self.cfg.privacy
        return write_privacy_json(
            self.run.privacy,
            accountant=p.accountant,
            delta=p.delta,
            dp_enabled=p.enabled,
            reproducible_noise=p.insecure_reproducible_noise,
            target_epsilon=p.target_epsilon,
            sites={SITE: self.trainer.privacy()},
            pretrained_on=self.pretrained_on,
        )


def save_generator_checkpoint(
    trainer: LocalTrainer, path: Path, privacy: dict[str, Any] | None = None
) -> Path:
    """The generator alone, with what synthesis needs to rebuild it and to label its output
    (``privacy``: the summary of the privacy record it is bound to)."""
    cfg = trainer.cfg
    return save_checkpoint(
        path,
        trainer.generator.state_dict(),
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=trainer.steps_done,
        extra={
            "model": asdict(cfg.model),
            "image_size": trainer.image_size,
            "epsilon": trainer.epsilon if math.isfinite(trainer.epsilon) else None,
            "delta": cfg.privacy.delta,
            "dp_enabled": trainer.dp_enabled,
            **({PRIVACY_KEY: privacy} if privacy is not None else {}),
        },
    )


def _steps_to_next_event(done: int, t: Any) -> int:
    """Steps until the next evaluation, sample, checkpoint or the end."""
    nxt = min(
        (done // every + 1) * every for every in (t.eval_every, t.sample_every, t.checkpoint_every)
    )
    return min(nxt, t.steps) - done


def train_central(
    cfg: Config,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    data: CentralData | None = None,
    device: str | None = None,
) -> RunDir:
    """Start a new run in ``out`` and train to the end. ``data`` overrides loading the cohort."""
    run = RunDir(out)
    run.create(cfg, overwrite=overwrite)
    if data is None:  # the cases validation left out of the split, listed in the run
        from fedsynth.common.data.cohort import record_skipped, resolve_cohort

        record_skipped(resolve_cohort(cfg), run.root)
    central = CentralRun(cfg, run, data or load_central_data(cfg), device)
    central.write_privacy()
    central.train(progress)
    return run


def resume_central(
    out: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    data: CentralData | None = None,
    device: str | None = None,
) -> RunDir:
    """Continue the run in ``out`` from its latest checkpoint with its saved config.

    ``overrides`` (dotted key -> value) may change e.g. train.steps to train further; the
    privacy accountant's history is restored, so the budget still holds.
    """
    run = RunDir(out)
    if not run.config.is_file():
        raise ConfigError("--resume", f"{run.root} has no {run.config.name}: not a run directory")
    cfg = run.read_config()
    if overrides:
        merged = OmegaConf.merge(OmegaConf.structured(cfg), OmegaConf.from_dotlist(
            [f"{k}={v}" for k, v in overrides.items()]
        ))  # fmt: skip
        cfg = config_from_dict(OmegaConf.to_container(merged))  # type: ignore[arg-type]
        run.write_config(cfg)  # config.yaml says what ran
    central = CentralRun(cfg, run, data or load_central_data(cfg), device)
    step = central.resume()
    log.info("resuming %s at step %d of %d", run.root, step, cfg.train.steps)
    central.train(progress)
    return run


def set_determinism() -> None:
    """Deterministic kernels where torch has them (cheap on CPU); warn, not fail, elsewhere."""
    torch.use_deterministic_algorithms(True, warn_only=True)
