"""The configuration schema: every setting of fedsynth, its default and its meaning.

Where settings live (one rule, also in docs/configuration.md):

- **This module** is the schema: every key exists here, with its type, its default and a
  comment saying what it means. A key that is not here does not exist.
- **YAML files** set values on top of these defaults (a key they leave out keeps its
  default; they define no key and no default of their own): ``configs/`` holds
  the named setups every command takes (``smoke`` for tests and install checks, ``demo``,
  ``brats-gpu``); ``simulations/`` holds federated scenarios for ``fedsynth simulate``. Both
  are read the same way (``load_config``).
- **pyproject.toml's** ``[tool.flwr.app.config]`` holds no setting: only which YAML file,
  which overrides and which run directory ``flwr run`` uses.
- **``key=value`` overrides** on the command line come last.

Resolution: defaults < YAML file < overrides; ``fedsynth config show CONFIG [key=value ...]``
prints the result. Parsed once at the edge (CLI, ServerApp, ClientApp) into these dataclasses
(plain, mutable; treat them as values: ``dataclasses.replace`` makes a changed copy);
everything below takes these objects. OmegaConf checks key names and types against the
dataclasses; ``_check_ranges`` checks values. Every error names the dotted key, e.g.
``config key 'train.lr': must be > 0, got -1``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.registry import ACCOUNTANTS
from fedsynth.common.sites import site_index

DEFAULT_CACHE_DIR = "~/.cache/fedsynth"


@dataclass
class DataConfig:
    source: str = "phantom"  # "phantom" (built-in, generated on first use) or "cohort"
    cohort_dir: str | None = None  # BraTS-layout folder; required when source == "cohort"
    cache_dir: str = DEFAULT_CACHE_DIR  # phantom cohorts and slice caches live here
    strict: bool = True  # True: any invalid case is an error; False: skip it with a warning
    labels_optional: bool = False  # allow cases without a label map (synthesis inputs only)
    # Label convention of the label maps: "auto" (by file naming: BraTS 2017-2021 names 0/1/2/4,
    # 2023 names 0/1/2/3, Decathlon 0/1 oedema/2 non-enhancing/3 enhancing) or one forced for
    # every case: "brats2015" (BraTS 2012-2016, 0/1/2/3/4; 3 non-enhancing merges into 1),
    # "brats2021", "brats2023", "msd". See docs/data.md.
    labels: str = "auto"


@dataclass
class PhantomConfig:
    subjects: int = 40  # phantom patients generated (each: 4 contrasts + a label map)
    sites: int = 4  # scanner sites simulated in the phantom cohort
    voxel_size: float = 2.0  # mm; coarser than BraTS's 1 mm so the demo is fast
    healthy_fraction: float = 0.1  # subjects generated without a tumour
    seed: int = 0  # seeds the phantom cohort: same settings and seed, same cohort
    # Subject ids are "<id_prefix>_0000", ...; scanner sites "<id_prefix>-scanner-<k>" unless
    # the default. A public cohort uses its own prefix so no id can collide with a site's.
    id_prefix: str = "phantom"


@dataclass
class SplitConfig:
    policy: str = "by-site"  # "iid" | "dirichlet" | "by-site"
    sites: int = 4  # training sites K
    test_fraction: float = 0.2  # held-out patients, never used for training by anyone
    alpha: float = 0.5  # Dirichlet concentration (quantity skew) for policy "dirichlet"
    site_csv: str | None = None  # CSV with columns subject,site for policy "by-site" on real data
    seed: int = 0  # seeds the test draw and the iid/dirichlet deal


@dataclass
class PreprocessConfig:
    image_size: int = 64  # slices are resized to image_size x image_size
    min_brain_fraction: float = 0.05  # axial slices with less brain than this are skipped
    lower_percentile: float = 0.5  # robust intensity window inside the brain
    upper_percentile: float = 99.5
    tissue_seed: int = 0  # seed of the 3-class Gaussian mixture for computed tissue maps


@dataclass
class ModelConfig:
    generator: str = "unet2d"  # a name in fedsynth.common.models.registry.GENERATORS
    discriminator: str = "patchgan2d"  # a name in registry.DISCRIMINATORS
    # U-Net widths per level, top to bottom (one down-sampling per level after the first)
    generator_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    discriminator_channels: int = 32  # width of the PatchGAN's first layer (doubles per layer)
    discriminator_layers: int = 3  # strided layers: more layers, larger patches
    norm_groups: int = 8  # GroupNorm groups (Opacus-compatible; no BatchNorm)
    # Pre-trained start (``fedsynth pretrain`` writes RUN/init.safetensors): G, and D where
    # the file has one, are loaded before training; the server sends this G in round 1.
    init: str | None = None


@dataclass
class PretrainConfig:
    """``fedsynth pretrain``: non-DP training on a cohort declared PUBLIC (shares nothing
    with the sites or the test patients; checked). Its held-out part is public too, so
    hyper-parameters may be tuned on it."""

    # The demo pre-trains first and federates from it (model.init) when true; `fedsynth
    # pretrain` and `fedsynth study` always pre-train.
    enabled: bool = False
    source: str = "phantom"  # "phantom" (the public phantom cohort below) or "cohort"
    cohort_dir: str | None = None  # a public BraTS-layout folder when source == "cohort"
    phantom: PhantomConfig = field(
        default_factory=lambda: PhantomConfig(
            subjects=200, sites=3, seed=1000, id_prefix="public", healthy_fraction=0.1
        )
    )
    test_fraction: float = 0.1  # public held-out patients (validation, may be tuned on)
    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-4
    eval_every: int = 250  # steps between public held-out evaluations (and sample grids)
    ema_decay: float = 0.999  # the released generator is this EMA of G's weights


@dataclass
class TrainConfig:
    steps: int = 1000  # optimisation steps (each: one D step and one G step)
    batch_size: int = 8  # expected patients per step (Poisson rate q = batch_size / patients)
    lr: float = 2e-4  # Adam learning rate of G and D
    beta1: float = 0.5  # Adam betas (pix2pix's)
    beta2: float = 0.999
    l1_weight: float = 100.0  # weight of G's L1 term against its adversarial term
    gan_loss: str = "lsgan"  # "lsgan" | "bce"
    tumour_slice_prob: float = 0.7  # chance the sampled slice of a patient shows tumour
    # Views per sampled patient inside its one clipped gradient: 1 (the slice) or 2 (plus
    # its left-right mirror). Free in privacy: see docs/privacy.md.
    views: int = 1
    eval_every: int = 100  # steps between held-out image-quality evaluations
    checkpoint_every: int = 100  # steps between checkpoints (generator, state, privacy.json)
    sample_every: int = 100  # steps between sample grids (samples/step_<step>.png)
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    precision: str = "auto"  # "auto" (bf16 on a GPU without DP) | "fp32" | "bf16" (docs/gpu.md)
    # Central trainer only: train on every site's training patients ("all") or one ("site-k").
    site: str = "all"
    eval_slices: int = 64  # held-out slices scored (MAE/PSNR/SSIM) at each evaluation
    sample_slices: int = 4  # fixed held-out label maps shown in samples/*.png


@dataclass
class PrivacyConfig:
    enabled: bool = True  # patient-level DP-SGD on both GAN steps; False: no DP (epsilon inf)
    target_epsilon: float = 10.0  # per patient, over the whole planned run; calibrates sigma
    delta: float = 1e-5  # must be well below 1 / patients at a site
    max_grad_norm: float = 1.0
    accountant: str = "rdp"  # calibrates the noise: fedsynth.common.privacy.registry names
    # INSECURE, simulation only: derive the DP noise and patient sampling from the public
    # seed (reproducible runs). Anyone who knows the config can then replay a site's training
    # and subtract the noise: the DP guarantee does not hold against them. Refused by a
    # deployed site; privacy.json, the datasheet and the report say so in words.
    insecure_reproducible_noise: bool = False
    # Generator parameters trained (and noised, clipped) at the sites: "all" | "norm+bias" |
    # "decoder" | "head" (fedsynth.common.gan.trainable). Few parameters from a public
    # pre-training (model.init) spend a small budget far better than "all" from scratch.
    trainable: str = "all"


@dataclass
class FederationConfig:
    rounds: int = 10  # federated rounds
    local_steps: int = 50  # training steps at each site per round
    # A name in fedsynth.server.strategy.STRATEGIES, checked against it when a run starts
    # (the registry imports Flower, which the config module must not).
    aggregation: str = "fedavg"
    trim_fraction: float = 0.2  # for trimmed-mean
    min_sites: int = 2  # a round with fewer successful sites fails
    round_timeout_s: float = 3600.0  # a site that has not replied by then loses its update
    client_cpus: float = 1.0  # simulation only: CPUs (Ray) reserved per simulated site
    client_gpus: float = 0.0  # simulation only: GPU fraction per simulated site
    # What one site can do to the global generator (fedsynth.server.bounds, docs/robustness.md).
    # Bound on a site's update ||w_site - w_global||_2 in units of lr x local_steps x
    # sqrt(parameters): how far Adam moves the weights if every step moves every weight by lr.
    # Measured on the smoke config: honest updates 0.5-0.6 of that unit. 0 turns the bound off.
    update_norm_factor: float = 2.0
    update_bound: str = "clip"  # beyond the bound: "clip" (scale it down) | "refuse" the update
    # FedAvg weights: "examples" (num-examples, capped at what the site declared in its first
    # round) | "equal" (every accepted site weighs the same; a site cannot buy influence)
    weighting: str = "examples"
    byzantine_sites: int = 0  # krum / multikrum: sites assumed malicious (f; needs n >= 2f + 3)
    # Released generator: EMA of the aggregates over rounds with this decay (post-processing,
    # no privacy cost; fedsynth.server.release). 0 (off): the last aggregate is released. Off
    # by default: no public-data sweep has chosen a decay (choosing it on site or test
    # patients would leak), and over the 5-10 rounds of the shipped configs an average lags
    # behind the fine-tuning (docs/federation.md).
    release_ema: float = 0.0
    # Deployment allow-list: site name -> the Flower node id its authentication key was
    # registered as (flwr supernode register). Empty: the first node to claim a name owns it.
    site_nodes: dict[str, int] = field(default_factory=dict)
    # Simulation only: address of a running Ray cluster ("<head ip>:6379") whose nodes run
    # the simulated sites; null starts a private Ray instance on this machine.
    ray_address: str | None = None


@dataclass
class SynthesisConfig:
    # Where label maps come from: "atlas" (MNI152 anatomy + procedural tumours, no patient
    # data) or "cohort" (label maps of a BraTS-layout folder the synthesising party may use).
    label_source: str = "atlas"
    cohort_dir: str | None = None  # required when label_source == "cohort"
    atlas_anatomies: int = 8  # distinct deformed MNI152 brains in an atlas bank
    atlas_voxel_size: float = 2.0  # mm; grid of atlas label cases (and of the cohort written)
    atlas_healthy_fraction: float = 0.25  # atlas brains without a tumour (transplant recipients)
    cases: int = 20  # synthetic cases written by `fedsynth synthesize` (--cases overrides)
    seed: int = 0  # seeds the bank, the edits and the generator's noise: same seed, same cohort
    batch_size: int = 16  # axial slices per generator forward pass
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    # Edits (Shin et al. 2018), each applied to a source case with its probability.
    p_transplant: float = 0.3  # put the tumour on another bank case's anatomy
    p_healthy_recipient: float = 0.5  # transplant: prefer a tumour-free recipient brain
    p_scale: float = 0.5  # grow or shrink the tumour about its centre
    scale_min: float = 0.7  # linear scale factor range (volume changes by factor**3)
    scale_max: float = 1.3
    p_rotate: float = 0.3  # rotate the tumour about its centre
    max_rotation_deg: float = 30.0  # per axis, uniform in [-max, max]
    p_translate: float = 0.5  # move the tumour inside the brain
    max_shift_mm: float = 20.0  # per axis, uniform in [-max, max]
    p_remove: float = 0.1  # remove the tumour: a healthy case


TRAINABLE_CHOICES: tuple[str, ...] = ("all", "norm+bias", "decoder", "head")
STUDY_ARMS: tuple[str, ...] = (  # "public-only" | "finetune:<trainable>:<eps>" | "scratch:..."
    "public-only",
    *(f"finetune:{t}:{e}" for t in ("norm+bias", "decoder") for e in ("inf", "8", "4", "1")),
    "scratch:all:8",
)


@dataclass
class StudyConfig:
    """``fedsynth study``: generator arms compared on the same held-out patients."""

    arms: list[str] = field(default_factory=lambda: list(STUDY_ARMS))
    segmentation: bool = True  # per arm: synthesise, then the benchmark's synthetic arms
    segmentation_arms: list[str] | None = None  # arms that get the benchmark (None: all)
    audit: bool = True  # per arm: membership inference and memorisation audit


BENCHMARK_ARMS: tuple[str, ...] = (
    "local",  # each site trains on its own real patients alone
    "pooled",  # all sites' real patients together (upper bound)
    "synthetic",  # synthetic cohort only (anonymisation)
    "local+synthetic",  # a site's real patients plus the synthetic cohort (augmentation)
    "synthetic->finetune",  # pretrain on synthetic, fine-tune on a site's real patients
    "fedavg",  # segmentation trained with Flower FedAvg across the sites (not DP)
    "public-only",  # synthetic cohort of a generator that never saw site data (needs
    # benchmark.public_checkpoint): what a site gets without the consortium
)


BENCHMARK_SITES = ("all", "smallest")  # which sites the per-site arms train a model for


@dataclass
class BenchmarkConfig:
    """Segmentation benchmark (``fedsynth benchmark``): which arms, how each model trains."""

    arms: list[str] = field(
        default_factory=lambda: [a for a in BENCHMARK_ARMS if a != "public-only"]
    )
    seeds: int = 3  # repetitions of every arm with seeds cfg.seed + 0, 1, ...
    segmenter: str = "unet2d"  # fedsynth.benchmark.segmenter.SEGMENTERS
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # U-Net widths
    res_units: int = 2  # residual units per U-Net level (MONAI UNet num_res_units)
    steps: int = 1500  # most optimisation steps per model (fedavg: rounds x local steps)
    batch_size: int = 16  # slices per step
    lr: float = 2e-3  # Adam
    tumour_slice_prob: float = 0.5  # chance a training slice is drawn among tumour slices
    augment: bool = True  # random flips and per-contrast intensity jitter
    acquisition_augment: bool = True  # random blur, gamma and noise (benchmark/augment.py)
    # With acquisition_augment: a smooth bias field per contrast (MONAI RandBiasField) and
    # spatially correlated multiplicative noise (texture). Chosen on public data only: on the
    # public2 consortium (configs/dp-defaults-sweep.yaml) they raised synthetic-only WT Dice
    # 0.408 -> 0.481 and left pooled real within 0.003 (docs/benchmark.md).
    bias_field_augment: bool = True
    texture_augment: bool = True
    val_fraction: float = 0.15  # of each arm's own training patients, for early stopping
    eval_every: int = 100  # steps between validation scores (the learning curve's points)
    patience: int = 4  # evaluations without a validation Dice gain > min_delta: stop
    min_delta: float = 0.005  # smallest validation Dice gain that counts as progress
    lr_decay: float = 0.5  # lr factor after 2 evaluations without a gain (1.0: constant lr)
    postprocess: bool = True  # drop small predicted tumours (threshold chosen on validation)
    public_checkpoint: str | None = None  # generator that never saw site data (public-only)
    workers: int = 1  # processes training arms in parallel (each with 1 torch thread if > 1)
    sites: str = "all"  # per-site arms (local, local+synthetic, ...): "all" or "smallest" only
    synthetic_cases: int = 40  # cases synthesised when the benchmark is given --checkpoint
    finetune_steps: int = 100  # synthetic->finetune: steps on the site's real data
    finetune_lr: float = 5e-4
    fedavg_rounds: int = 5  # fedavg: local steps per round = steps // fedavg_rounds
    overlay_patients: int = 3  # held-out patients drawn as prediction overlays
    device: str = "auto"  # "auto" | "cpu" | "cuda"


@dataclass
class Config:
    seed: int = 0  # the run's seed: weight initialisation, patient sampling, evaluation slices
    name: str = "fedsynth"  # run name: labels outputs and default run directories
    data: DataConfig = field(default_factory=DataConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


# Value checks after parsing (OmegaConf has checked names and types); each error names the key.
# Keys whose values name a registered class are checked by their registry instead
# (federation.aggregation: fedsynth.server.strategy.STRATEGIES; model.*: models/registry.py).
_CHOICES: dict[str, Sequence[str]] = {
    "data.source": ("phantom", "cohort"),
    "data.labels": ("auto", "brats2021", "brats2023", "brats2015", "msd"),  # fmt: skip
    "split.policy": ("iid", "dirichlet", "by-site"),
    "train.gan_loss": ("lsgan", "bce"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("auto", "fp32", "bf16"),
    "privacy.accountant": tuple(ACCOUNTANTS),
    "synthesis.label_source": ("atlas", "cohort"),
    "synthesis.device": ("auto", "cpu", "cuda"),
    "federation.update_bound": ("clip", "refuse"),
    "federation.weighting": ("examples", "equal"),
    "pretrain.source": ("phantom", "cohort"),
    "privacy.trainable": TRAINABLE_CHOICES,
}
_POSITIVE = [
    "phantom.subjects", "phantom.sites", "phantom.voxel_size", "split.sites", "split.alpha",
    "preprocess.image_size", "train.steps", "train.batch_size", "train.lr", "train.eval_every",
    "train.checkpoint_every", "train.sample_every", "privacy.target_epsilon", "privacy.delta",
    "privacy.max_grad_norm", "federation.rounds", "federation.local_steps",
    "federation.min_sites", "federation.round_timeout_s", "model.discriminator_channels",
    "model.discriminator_layers", "model.norm_groups", "pretrain.steps", "pretrain.batch_size",
    "pretrain.lr", "pretrain.eval_every", "pretrain.phantom.subjects",
]  # fmt: skip
_UNIT_INTERVAL = [  # closed [0, 1]
    "phantom.healthy_fraction", "preprocess.min_brain_fraction", "train.tumour_slice_prob",
    "train.beta1", "train.beta2",
]  # fmt: skip
_OPEN_UNIT_INTERVAL = ["split.test_fraction", "privacy.delta", "pretrain.test_fraction"]


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _non_finite(obj: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) of every inf/nan float in a config dataclass, nested ones too."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _non_finite(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            yield key, value
        elif isinstance(value, list):
            yield from (
                (f"{key}[{i}]", v)
                for i, v in enumerate(value)
                if isinstance(v, float) and not math.isfinite(v)
            )


def _check_ranges(cfg: Config) -> None:
    # No setting means "infinite": inf passes every "> 0" check below and nan fails none of
    # the "not ... > 0" ones in a useful way (lr=inf trains to NaN, target_epsilon=inf trains
    # with noise while claiming a budget). Refuse them first, by name.
    for key, value in _non_finite(cfg):
        raise ConfigError(key, f"must be a finite number, got {value}")
    for key, choices in _CHOICES.items():
        if _get(cfg, key) not in choices:
            raise ConfigError(key, f"must be one of {', '.join(choices)}; got {_get(cfg, key)!r}")
    for key in _POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(key, f"must be > 0, got {_get(cfg, key)}")
    for key in _UNIT_INTERVAL:
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(key, f"must be in [0, 1], got {_get(cfg, key)}")
    for key in _OPEN_UNIT_INTERVAL:
        if not 0.0 < _get(cfg, key) < 1.0:
            raise ConfigError(key, f"must be in (0, 1), got {_get(cfg, key)}")
    if not 0.0 <= cfg.federation.trim_fraction < 0.5:
        raise ConfigError("federation.trim_fraction", "must be in [0, 0.5)")
    if cfg.federation.client_cpus <= 0 or cfg.federation.client_gpus < 0:
        raise ConfigError("federation.client_cpus", "client resources must be > 0 CPUs, >= 0 GPUs")
    if not 0 <= cfg.preprocess.lower_percentile < cfg.preprocess.upper_percentile <= 100:
        raise ConfigError("preprocess.lower_percentile", "need 0 <= lower < upper <= 100")
    if cfg.train.site != "all" and site_index(cfg.train.site) is None:
        raise ConfigError("train.site", f"must be 'all' or 'site-<k>', got {cfg.train.site!r}")
    if cfg.train.views not in (1, 2):
        raise ConfigError("train.views", f"must be 1 or 2 (slice, mirror), got {cfg.train.views}")
    for key in ("train.eval_slices", "train.sample_slices"):
        if _get(cfg, key) < 0:
            raise ConfigError(key, f"must be >= 0, got {_get(cfg, key)}")
    if cfg.preprocess.image_size % 16:
        raise ConfigError("preprocess.image_size", "must be a multiple of 16 (U-Net depth)")
    if cfg.data.source == "cohort" and not cfg.data.cohort_dir:
        raise ConfigError("data.cohort_dir", "required when data.source is 'cohort'")
    for key in ("train.lr", "benchmark.lr", "benchmark.finetune_lr"):
        if _get(cfg, key) > 1.0:  # Adam moves each weight by ~lr per step; beyond 1 it overflows
            raise ConfigError(key, f"must be <= 1 (an Adam learning rate), got {_get(cfg, key)}")
    if cfg.federation.update_norm_factor < 0:
        raise ConfigError(
            "federation.update_norm_factor",
            f"must be >= 0 (0: off), got {cfg.federation.update_norm_factor}",
        )
    if cfg.federation.byzantine_sites < 0:
        raise ConfigError("federation.byzantine_sites", "must be >= 0")
    if not 0.0 <= cfg.federation.release_ema < 1.0:
        raise ConfigError(
            "federation.release_ema",
            f"must be in [0, 1) (0: off), got {cfg.federation.release_ema}",
        )
    if not 0.0 <= cfg.pretrain.ema_decay < 1.0:
        raise ConfigError("pretrain.ema_decay", f"must be in [0, 1), got {cfg.pretrain.ema_decay}")
    if cfg.pretrain.source == "cohort" and not cfg.pretrain.cohort_dir:
        raise ConfigError("pretrain.cohort_dir", "required when pretrain.source is 'cohort'")
    for key in ("phantom.id_prefix", "pretrain.phantom.id_prefix"):
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", _get(cfg, key)):
            raise ConfigError(key, f"must be letters and digits, got {_get(cfg, key)!r}")
    if not cfg.model.generator_channels or min(cfg.model.generator_channels) <= 0:
        raise ConfigError("model.generator_channels", "must be a non-empty list of positive ints")
    _check_synthesis(cfg.synthesis)
    for arm in [*cfg.study.arms, *(cfg.study.segmentation_arms or [])]:
        check_study_arm(arm)  # a misspelt segmentation arm would otherwise be skipped silently
    _check_benchmark(cfg.benchmark)


def check_study_arm(arm: str) -> tuple[str, str, float]:
    """ "public-only" | "finetune:<trainable>:<eps>" | "scratch:<trainable>:<eps>" ->
    (kind, trainable, epsilon; inf = no DP); ConfigError naming study.arms otherwise."""
    if arm == "public-only":
        return arm, "none", math.inf
    parts = arm.split(":")
    try:
        kind, trainable, eps = parts[0], parts[1], float(parts[2])
    except (IndexError, ValueError):
        kind, trainable, eps = "?", "?", math.nan
    if (
        len(parts) != 3
        or kind not in ("finetune", "scratch")
        or trainable not in TRAINABLE_CHOICES
        or not eps > 0
    ):
        raise ConfigError(
            "study.arms",
            f"{arm!r}: use public-only, finetune:<trainable>:<epsilon> or scratch:<trainable>:"
            f"<epsilon> with trainable in {', '.join(TRAINABLE_CHOICES)} and epsilon > 0 or inf",
        )
    return kind, trainable, eps


def _check_synthesis(syn: SynthesisConfig) -> None:
    for key in (
        "atlas_anatomies",
        "atlas_voxel_size",
        "cases",
        "batch_size",
        "scale_min",
        "scale_max",
    ):
        if not getattr(syn, key) > 0:
            raise ConfigError(f"synthesis.{key}", f"must be > 0, got {getattr(syn, key)}")
    for key in (
        "atlas_healthy_fraction",
        "p_transplant",
        "p_healthy_recipient",
        "p_scale",
        "p_rotate",
        "p_translate",
        "p_remove",
    ):
        if not 0.0 <= getattr(syn, key) <= 1.0:
            raise ConfigError(f"synthesis.{key}", f"must be in [0, 1], got {getattr(syn, key)}")
    if syn.scale_min > syn.scale_max:
        raise ConfigError(
            "synthesis.scale_min", f"must be <= synthesis.scale_max ({syn.scale_max})"
        )
    if not 0.0 <= syn.max_rotation_deg <= 180.0:
        raise ConfigError(
            "synthesis.max_rotation_deg", f"must be in [0, 180], got {syn.max_rotation_deg}"
        )
    if syn.max_shift_mm < 0:
        raise ConfigError("synthesis.max_shift_mm", f"must be >= 0, got {syn.max_shift_mm}")
    if syn.label_source == "cohort" and not syn.cohort_dir:
        raise ConfigError(
            "synthesis.cohort_dir", "required when synthesis.label_source is 'cohort'"
        )


def _check_benchmark(b: BenchmarkConfig) -> None:
    unknown = [a for a in b.arms if a not in BENCHMARK_ARMS]
    if unknown or not b.arms:
        raise ConfigError(
            "benchmark.arms",
            f"unknown arm(s) {unknown}; choose a non-empty list of {', '.join(BENCHMARK_ARMS)}",
        )
    for key in ("seeds", "steps", "batch_size", "lr", "synthetic_cases", "finetune_lr"):
        if not getattr(b, key) > 0:
            raise ConfigError(f"benchmark.{key}", f"must be > 0, got {getattr(b, key)}")
    for key in ("finetune_steps", "overlay_patients"):
        if getattr(b, key) < 0:
            raise ConfigError(f"benchmark.{key}", f"must be >= 0, got {getattr(b, key)}")
    for key in ("patience", "workers"):
        if getattr(b, key) < 1:
            raise ConfigError(f"benchmark.{key}", f"must be >= 1, got {getattr(b, key)}")
    for key in ("res_units", "min_delta"):
        if getattr(b, key) < 0:
            raise ConfigError(f"benchmark.{key}", f"must be >= 0, got {getattr(b, key)}")
    if b.sites not in BENCHMARK_SITES:
        raise ConfigError("benchmark.sites", f"must be one of {BENCHMARK_SITES}, got {b.sites!r}")
    if not 0 < b.lr_decay <= 1:
        raise ConfigError("benchmark.lr_decay", f"must be in (0, 1], got {b.lr_decay}")
    if not 0 < b.eval_every <= b.steps:
        raise ConfigError(
            "benchmark.eval_every", f"must be in [1, benchmark.steps], got {b.eval_every}"
        )
    if not 0.0 <= b.val_fraction < 1.0:
        raise ConfigError("benchmark.val_fraction", f"must be in [0, 1), got {b.val_fraction}")
    if "public-only" in b.arms and not b.public_checkpoint:
        raise ConfigError(
            "benchmark.public_checkpoint",
            "arm public-only needs the path of a generator checkpoint that never saw site data "
            "(fedsynth pretrain writes one)",
        )
    if not 1 <= b.fedavg_rounds <= b.steps:
        raise ConfigError(
            "benchmark.fedavg_rounds", f"must be in [1, benchmark.steps], got {b.fedavg_rounds}"
        )
    if not 0.0 <= b.tumour_slice_prob <= 1.0:
        raise ConfigError(
            "benchmark.tumour_slice_prob", f"must be in [0, 1], got {b.tumour_slice_prob}"
        )
    if not b.channels or min(b.channels) <= 0:
        raise ConfigError("benchmark.channels", "must be a non-empty list of positive ints")
    if b.device not in ("auto", "cpu", "cuda"):
        raise ConfigError("benchmark.device", f"must be one of auto, cpu, cuda; got {b.device!r}")


def _omegaconf_key(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    return str(key)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (YAML) over the defaults, apply ``key=value`` overrides, validate.

    Raises ConfigError naming the key for unknown keys, wrong types and values out of range.
    """
    schema = OmegaConf.structured(Config)
    layers: list[DictConfig] = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("<file>", f"config file {path} does not exist")
        try:
            layers.append(OmegaConf.load(path))  # type: ignore[arg-type]
        except Exception as e:  # YAML syntax errors come in several types
            raise ConfigError("<file>", f"{path} is not valid YAML: {e}") from e
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "overrides must look like key=value (e.g. train.steps=10)")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(_omegaconf_key(e), msg) from e
    _check_ranges(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from a resolved dict (e.g. a run directory's config.yaml)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_key(e), str(e).splitlines()[0]) from e
    _check_ranges(cfg)
    return cfg


def expand_path(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()
