"""The local pix2pix loop: used by the central trainer and by every federated site.

A LocalTrainer owns G, D, their Adam optimisers, the per-patient DP engines, the privacy
accountant, the patient sampler and the random generators. The federated client sends and
receives only the generator (``get_generator_weights``/``set_generator_weights``); the rest
is site-local state (``state_dict``/``load_state_dict``, ``save``/``load``) kept on the
site's disk. With DP, model init, sampling and DP noise come from a secret drawn from the
OS's cryptographic source (``fedsynth.common.privacy.randomness``), saved and restored with
that state; nobody who knows the config can replay them. Without DP (or with the labelled
``privacy.insecure_reproducible_noise``) they come from the public ``seed`` instead.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from fedsynth.common.config import Config
from fedsynth.common.data.datasets import PatientSampler
from fedsynth.common.device import (
    Prefetcher,
    loader_depth,
    pin,
    resolve_device,  # noqa: F401 (imported from here by synthesis and the benchmark)
    resolve_precision,
    to_device,
)
from fedsynth.common.errors import CheckpointError
from fedsynth.common.gan.init import apply_init, load_init
from fedsynth.common.gan.losses import Pix2PixLoss
from fedsynth.common.gan.step import GanParts, StepLosses, train_step
from fedsynth.common.gan.trainable import select_trainable
from fedsynth.common.io import checkpoints as ckpt
from fedsynth.common.models.generator import CONDITION_CHANNELS, IMAGE_CHANNELS
from fedsynth.common.models.registry import (
    architecture_hash,
    build_discriminator,
    build_generator,
)
from fedsynth.common.privacy.accountant import PrivacyAccountant
from fedsynth.common.privacy.dp import (
    DEFAULT_GRAD_SAMPLE_MODE,
    PatientDP,
    accounted_noise_multiplier,
    calibrate_noise_multiplier,
    check_delta,
    sample_rate_for,
)
from fedsynth.common.privacy.randomness import INIT, NOISE, SAMPLING, TrainingRandomness
from fedsynth.common.privacy.report import SitePrivacy


class Sampler(Protocol):
    """What the trainer needs from datasets.PatientSampler."""

    def sample(self, rng: np.random.Generator) -> np.ndarray: ...

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class StepReport:
    """Result of ``train_steps(n)``. Losses are means over the non-empty steps (nan if none)."""

    steps: int  # steps taken in this call
    total_steps: int  # steps this trainer has taken in all (across resumes)
    loss_d: float
    loss_g_adv: float
    loss_g_l1: float  # weighted by train.l1_weight
    slices: int  # slices used (= patients sampled, one slice each)
    epsilon: float  # spent so far; math.inf without DP
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }


@dataclass
class TrainerState:
    """Site-local state: tensors (safetensors-ready) and JSON-serialisable metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def _patient_sampler(cache: Any, sample_rate: float, cfg: Config, seed: int) -> Sampler:
    return PatientSampler(cache, sample_rate, cfg.train.tumour_slice_prob, seed)


def with_views(
    cond: torch.Tensor, real: torch.Tensor, views: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S, S) -> (views * B, C, S, S), view-major: view 1 is the left-right mirror
    (axis -2 is x in RAS order), a brain as plausible as the original."""
    if views == 1:
        return cond, real
    return torch.cat([cond, cond.flip(-2)]), torch.cat([real, real.flip(-2)])


class LocalTrainer:
    """pix2pix on one group of patients (a site, or all training patients centrally).

    ``cache``: a SliceCache (patients, images (N, 4, S, S)). ``planned_steps``: the DP steps
    the noise is calibrated for (train.steps centrally; rounds x local_steps at a site).
    ``seed``: the PUBLIC seed, used only when the randomness may be reproducible (no DP, or
    ``privacy.insecure_reproducible_noise``); defaults to cfg.seed. With DP a fresh secret is
    drawn instead, and ``load`` restores the saved one. ``sampler``: defaults to
    datasets.PatientSampler(cache, q, train.tumour_slice_prob, <sampling seed>).
    """

    def __init__(
        self,
        cfg: Config,
        cache: Any,
        *,
        planned_steps: int,
        site: str = "central",
        seed: int | None = None,
        device: str | torch.device | None = None,
        sampler: Sampler | None = None,
        grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    ):
        self.cfg = cfg
        self.site = site
        self.seed = cfg.seed if seed is None else seed
        self.device = resolve_device(cfg.train.device) if device is None else torch.device(device)
        where = f" at site {site}"
        self.patients = len(cache.patients)
        self.image_size = int(cache.images.shape[-1])
        self.sample_rate = sample_rate_for(cfg.train.batch_size, self.patients, where)
        self.dp_enabled = cfg.privacy.enabled
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device, self.dp_enabled)
        self.randomness = (
            TrainingRandomness.draw()
            if self.dp_enabled and not cfg.privacy.insecure_reproducible_noise
            else TrainingRandomness.reproducible_from(self.seed)
        )
        r = self.randomness
        self.sampler = sampler or _patient_sampler(cache, self.sample_rate, cfg, r.seed(SAMPLING))
        self.planned_steps = planned_steps
        self.steps_done = 0
        self.rng = np.random.default_rng(r.seed(SAMPLING, bits=128))
        self.noise_generator = torch.Generator(device=self.device).manual_seed(r.seed(NOISE))
        self.generator, self.discriminator = self._build_networks()
        # Freeze what privacy.trainable leaves out BEFORE the DP engines wrap G.
        self.trainable = select_trainable(self.generator, cfg.privacy.trainable)
        self.noise_multiplier = self._calibrate(where) if self.dp_enabled else 0.0
        self.accountant = PrivacyAccountant(
            kind=cfg.privacy.accountant,
            delta=cfg.privacy.delta,
            target_epsilon=cfg.privacy.target_epsilon if self.dp_enabled else None,
        )
        self.parts = self._build_parts(grad_sample_mode)

    # -- construction -------------------------------------------------------------------
    def _build_networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        # Initialise from the (secret) init seed without touching the caller's global torch
        # RNG. D's initial weights never leave the trainer; knowing them would help a replay.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.randomness.seed(INIT))
            g = build_generator(self.cfg.model).to(self.device)
            d = build_discriminator(self.cfg.model).to(self.device)
        if self.cfg.model.init:  # pre-trained on public data (fedsynth pretrain)
            init = load_init(self.cfg.model.init, self.cfg.model, self.image_size)
            apply_init(init, g, d)
        return g, d

    def _calibrate(self, where: str) -> float:
        p = self.cfg.privacy
        check_delta(p.delta, self.patients, where)
        return calibrate_noise_multiplier(
            target_epsilon=p.target_epsilon,
            delta=p.delta,
            sample_rate=self.sample_rate,
            planned_steps=self.planned_steps,
            accountant=p.accountant,
        )

    def _build_parts(self, grad_sample_mode: str) -> GanParts:
        t = self.cfg.train
        dp_d = dp_g = None
        if self.dp_enabled:
            common = dict(
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.cfg.privacy.max_grad_norm,
                expected_batch_size=self.sample_rate * self.patients,
                generator=self.noise_generator,
                grad_sample_mode=grad_sample_mode,
            )
            dp_d = PatientDP(self.discriminator, **common)
            dp_g = PatientDP(self.generator, **common)
        betas = (t.beta1, t.beta2)
        return GanParts(
            generator=self.generator,
            discriminator=self.discriminator,
            opt_g=torch.optim.Adam(
                [p for p in self.generator.parameters() if p.requires_grad], lr=t.lr, betas=betas
            ),
            opt_d=torch.optim.Adam(self.discriminator.parameters(), lr=t.lr, betas=betas),
            loss=Pix2PixLoss(t.gan_loss, t.l1_weight),
            dp_d=dp_d,
            dp_g=dp_g,
            amp_dtype=self.amp_dtype,
        )

    # -- training -----------------------------------------------------------------------
    @property
    def accounted_noise_multiplier(self) -> float:
        """Noise multiplier of the joint D+G mechanism the accountant records (sigma/sqrt 2)."""
        return accounted_noise_multiplier(self.noise_multiplier)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at privacy.delta; math.inf without DP."""
        return self.accountant.epsilon() if self.dp_enabled else math.inf

    def check_budget(self, n: int) -> None:
        """Raise PrivacyBudgetError if ``n`` more steps would exceed privacy.target_epsilon."""
        if self.dp_enabled:
            self.accountant.check_budget(
                noise_multiplier=self.accounted_noise_multiplier,
                sample_rate=self.sample_rate,
                steps=n,
            )

    def train_steps(self, n: int, *, progress: bool = False) -> StepReport:
        """Take ``n`` iterations (each a D step and a G step); refuse up front (raising
        PrivacyBudgetError) if they would exceed the privacy budget."""
        self.check_budget(n)
        self.generator.train()
        self.discriminator.train()
        start = time.perf_counter()
        done: list[StepLosses] = []
        bar = tqdm(range(n), desc=f"train {self.site}", disable=not progress, leave=False)
        # On a GPU the next batches are sampled, read and pinned while the current step runs.
        batches = Prefetcher(self._next_batch, loader_depth(self.device)).take(n)
        for _, batch in zip(bar, batches, strict=True):
            losses = self._one_step(batch)
            done.append(losses)
            if progress and losses.batch:
                bar.set_postfix(d=f"{losses.d:.3f}", l1=f"{losses.g_l1:.3f}")
        return self._report(done, time.perf_counter() - start)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next Poisson sample's (cond, real) on the host, pinned for a GPU. Called once
        per step, in step order (possibly from the prefetch thread): the only user of
        ``self.rng`` while training runs."""
        indices = np.asarray(self.sampler.sample(self.rng))
        if len(indices):
            cond, real = self.sampler.batch(indices)
        else:  # empty Poisson sample: still a (noise-only) DP step
            s = self.image_size
            cond = torch.zeros((0, CONDITION_CHANNELS, s, s))
            real = torch.zeros((0, IMAGE_CHANNELS, s, s))
        cond, real = with_views(cond, real, self.cfg.train.views)
        return pin((cond, real), self.device)

    def _one_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepLosses:
        cond, real = to_device(batch, self.device)
        losses = train_step(self.parts, cond, real, self.cfg.train.views)
        if self.dp_enabled:
            self.accountant.step(
                noise_multiplier=self.accounted_noise_multiplier, sample_rate=self.sample_rate
            )
        self.steps_done += 1
        return losses

    def _report(self, done: list[StepLosses], seconds: float) -> StepReport:
        full = [s for s in done if s.batch]

        def mean(key: str) -> float:
            return float(np.mean([getattr(s, key) for s in full])) if full else math.nan

        return StepReport(
            steps=len(done),
            total_steps=self.steps_done,
            loss_d=mean("d"),
            loss_g_adv=mean("g_adv"),
            loss_g_l1=mean("g_l1"),
            slices=sum(s.batch for s in done),
            epsilon=self.epsilon,
            seconds=seconds,
        )

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """Images (B, 4, S, S) in [-1, 1] on the CPU for conditions (B, 7, S, S)."""
        self.generator.eval()
        out = [
            self.generator(cond[i : i + batch_size].to(self.device)).cpu()
            for i in range(0, cond.shape[0], batch_size)
        ]
        self.generator.train()
        return torch.cat(out) if out else torch.zeros((0, IMAGE_CHANNELS, *cond.shape[2:]))

    # -- generator exchange (federation) ------------------------------------------------
    def get_generator_weights(self) -> dict[str, np.ndarray]:
        """The generator's state as float32 numpy copies, keyed like its state_dict."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.generator.state_dict().items()}

    def set_generator_weights(self, weights: dict[str, np.ndarray], source: str = "server") -> None:
        """Replace the generator's weights; CheckpointError naming ``source`` if they don't fit."""
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
        ckpt.load_module_state(self.generator, tensors, Path(source))

    # -- site-local state ---------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return f"{self.cfg.model.generator}+{self.cfg.model.discriminator}"

    def privacy(self) -> SitePrivacy:
        """This trainer's accounting, for privacy.json."""
        return SitePrivacy(
            epsilon=self.epsilon,
            sample_rate=self.sample_rate,
            steps=self.accountant.steps,
            noise_multiplier=self.accounted_noise_multiplier if self.dp_enabled else None,
            step_noise_multiplier=self.noise_multiplier if self.dp_enabled else None,
            max_grad_norm=self.cfg.privacy.max_grad_norm if self.dp_enabled else None,
            history=self.accountant.state_dict()["history"],
        )

    def state_dict(self) -> TrainerState:
        """Everything needed to continue exactly: G, D, both Adam states, the accountant,
        the step count and the sampling and noise RNG states."""
        tensors: dict[str, torch.Tensor] = {}
        tensors.update(ckpt.prefixed("generator", self.generator.state_dict()))
        tensors.update(ckpt.prefixed("discriminator", self.discriminator.state_dict()))
        opt_meta = {}
        for name in ("opt_g", "opt_d"):
            t, meta = ckpt.optimizer_to_tensors(getattr(self.parts, name))
            tensors.update(ckpt.prefixed(name, t))
            opt_meta[name] = meta
        tensors["noise_rng"] = self.noise_generator.get_state()
        # The secret root of the noise and the sample: this state never leaves the site.
        tensors["randomness_secret"] = torch.frombuffer(
            bytearray(self.randomness.secret), dtype=torch.uint8
        )
        # A snapshot: module and optimiser state_dicts share storage with live tensors that
        # the next step updates in place.
        tensors = {k: v.detach().clone() for k, v in tensors.items()}
        meta = {
            "site": self.site,
            "steps_done": self.steps_done,
            "dp_enabled": self.dp_enabled,
            "reproducible_noise": self.randomness.reproducible,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "planned_steps": self.planned_steps,
            "accountant": self.accountant.state_dict(),
            "numpy_rng": copy.deepcopy(self.rng.bit_generator.state),
            "optimizers": opt_meta,
        }
        return TrainerState(tensors, meta)

    def load_state_dict(self, state: TrainerState, path: Path | str = "<state>") -> None:
        """Restore ``state_dict()`` output; CheckpointError naming ``path`` if it does not fit."""
        path = Path(path)
        meta, tensors = state.meta, state.tensors
        if meta.get("dp_enabled") != self.dp_enabled:
            raise CheckpointError(
                path,
                f"saved with privacy.enabled={meta.get('dp_enabled')}, config says {self.dp_enabled}",
            )
        if bool(meta.get("reproducible_noise")) != self.randomness.reproducible:
            raise CheckpointError(
                path,
                f"saved with reproducible (public-seed) noise = {meta.get('reproducible_noise')}, "
                f"the config asks for {self.randomness.reproducible} "
                "(privacy.insecure_reproducible_noise cannot change within a run)",
            )
        self.randomness = TrainingRandomness(
            bytes(tensors["randomness_secret"].to(torch.uint8).cpu().numpy().tobytes()),
            reproducible=self.randomness.reproducible,
        )
        ckpt.load_module_state(self.generator, ckpt.unprefixed("generator", tensors), path)
        ckpt.load_module_state(self.discriminator, ckpt.unprefixed("discriminator", tensors), path)
        for name in ("opt_g", "opt_d"):
            ckpt.optimizer_from_tensors(
                getattr(self.parts, name),
                ckpt.unprefixed(name, tensors),
                meta["optimizers"][name],
                path,
            )
        self.noise_generator.set_state(tensors["noise_rng"].to(torch.uint8).cpu())
        self.rng.bit_generator.state = meta["numpy_rng"]
        self.accountant.load_state_dict(meta["accountant"])
        self.steps_done = int(meta["steps_done"])
        # Keep the noise the run was calibrated with, even if the target changed since:
        # the accountant then refuses steps beyond the (new) target.
        self._set_noise_multiplier(float(meta["noise_multiplier"]))

    def _set_noise_multiplier(self, sigma: float) -> None:
        self.noise_multiplier = sigma
        for dp in (self.parts.dp_d, self.parts.dp_g):
            if dp is not None:
                dp.noise_multiplier = sigma

    def save(self, path: str | Path) -> Path:
        """Write the site-local state to one safetensors checkpoint, atomically."""
        state = self.state_dict()
        return ckpt.save_checkpoint(
            path,
            state.tensors,
            architecture=self.architecture,
            config_hash=architecture_hash(self.cfg.model),
            step=self.steps_done,
            extra=state.meta,
        )

    def load(self, path: str | Path) -> None:
        """Restore what ``save`` wrote; CheckpointError naming the file on any mismatch."""
        c = ckpt.load_checkpoint(
            path, architecture=self.architecture, config_hash=architecture_hash(self.cfg.model)
        )
        try:
            self.load_state_dict(TrainerState(c.tensors, c.extra), c.path)
        except KeyError as e:
            raise CheckpointError(c.path, f"missing entry {e}") from e
