"""Load a trained generator for synthesis from a generator checkpoint.

Central training writes ``RUN/checkpoints/generator_<step>.safetensors``; the federated
server writes the same format per round plus ``RUN/checkpoints/generator.safetensors`` (the
latest). Both are ``fedsynth.common.io.checkpoints`` files whose metadata holds the model
section and image size; a full trainer state checkpoint (tensors ``generator.*``) works as
well, with the model section taken from the run's ``config.yaml``.

The network is rebuilt with the model registry and every weight's name and shape is
checked; a corrupted file or a checkpoint of another architecture raises CheckpointError
naming the file. The metadata is not trusted to size memory: it is range-checked (the
config's own checks plus the ``MAX_*`` bounds below), and the network is first built on
PyTorch's "meta" device (shapes only, no memory) and compared with the file's tensors; only
a file that holds every weight of the network it describes gets a real one.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsynth.common.config import Config, ModelConfig, config_from_dict
from fedsynth.common.errors import CheckpointError, ConfigError
from fedsynth.common.io.checkpoints import (
    check_module_state,
    load_checkpoint,
    load_module_state,
    unprefixed,
)
from fedsynth.common.models.registry import architecture_hash, build_generator
from fedsynth.common.rundir import RunDir, find_run_dir

# Bounds on a checkpoint's model metadata, far above any network fedsynth trains (smoke/demo:
# 8-64 channels at 32-64 px; brats-gpu: 32-256 channels) and far below a network that
# would exhaust memory before its shapes are compared with the file.
MAX_CHANNELS = 2048  # per U-Net level / PatchGAN first layer
MAX_LEVELS = 8  # U-Net levels (depth)
MAX_DISCRIMINATOR_LAYERS = 8
MAX_IMAGE_SIZE = 1024  # pixels per side


@dataclass
class LoadedGenerator:
    """A generator ready for inference, and what the datasheet says about it.

    module: torch nn.Module in eval mode on the CPU, (B, 7, S, S) one-hot -> (B, 4, S, S) in
    [-1, 1]. image_size: S. run_dir: the training run directory, or None if the checkpoint
    lies outside one. step: training step of the checkpoint; extra: its JSON metadata
    (round, epsilon, ... as the trainer or server wrote them).
    """

    path: Path
    sha256: str
    module: Any
    model: ModelConfig
    image_size: int
    run_dir: Path | None
    run_config: Config | None
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_config(run_dir: Path | None) -> Config | None:
    """The run's config.yaml; CheckpointError naming it if unreadable (it came with the file)."""
    if run_dir is None:
        return None
    run = RunDir(run_dir)
    try:
        return run.read_config()
    except ConfigError as e:
        raise CheckpointError(run.config, str(e)) from e


def _model_from(
    path: Path, extra: dict[str, Any], run_cfg: Config | None, fallback: Config | None
) -> tuple[ModelConfig, int]:
    """Model section and image size: checkpoint metadata first, then the run's config, then
    the caller's config."""
    cfg = run_cfg or fallback
    if "model" not in extra and cfg is None:
        raise CheckpointError(
            path,
            "no model settings in the checkpoint and no run config.yaml beside it; pass CONFIG",
        )
    if "image_size" not in extra and cfg is None:
        raise CheckpointError(
            path, "image size unknown: no metadata and no run config; pass CONFIG"
        )
    base = cfg if cfg is not None else Config()  # (Config() is used only when cfg is set)
    model = extra.get("model", asdict(base.model))
    return _checked_model(path, model, extra.get("image_size", base.preprocess.image_size))


def _checked_model(path: Path, model: Any, size: Any) -> tuple[ModelConfig, int]:
    """The model section and image size after the config's type and range checks and the
    ``MAX_*`` bounds; CheckpointError naming the file and the key otherwise."""
    try:
        checked = config_from_dict({"model": model, "preprocess": {"image_size": size}})
    except ConfigError as e:
        raise CheckpointError(path, f"model metadata out of range: {e}") from e
    m, size = checked.model, checked.preprocess.image_size
    limits = [
        ("model.generator_channels", max(m.generator_channels), MAX_CHANNELS),
        ("model.generator_channels (levels)", len(m.generator_channels), MAX_LEVELS),
        ("model.discriminator_channels", m.discriminator_channels, MAX_CHANNELS),
        ("model.discriminator_layers", m.discriminator_layers, MAX_DISCRIMINATOR_LAYERS),
        ("preprocess.image_size", size, MAX_IMAGE_SIZE),
    ]
    for key, value, limit in limits:
        if value > limit:
            raise CheckpointError(
                path, f"model metadata out of range: {key} is {value}, at most {limit} is loaded"
            )
    if size % 2 ** (len(m.generator_channels) - 1):
        raise CheckpointError(
            path,
            f"model metadata out of range: image size {size} is not divisible by "
            f"2^{len(m.generator_channels) - 1} ({len(m.generator_channels)} U-Net levels)",
        )
    return m, size


def load_generator(path: str | Path, fallback: Config | None = None) -> LoadedGenerator:
    """Rebuild and load the generator of ``path`` (see the module docstring).

    ``fallback`` supplies the model section and image size if neither the checkpoint nor its
    run directory does. Raises CheckpointError naming the file for a missing, corrupted or
    foreign file, or weights that do not fit the architecture they claim.
    """
    path = Path(path)
    ckpt = load_checkpoint(path)  # CheckpointError for missing, corrupted or foreign files
    run_dir = find_run_dir(path)
    run_cfg = _run_config(run_dir)
    model, size = _model_from(path, ckpt.extra, run_cfg, fallback)
    if ckpt.config_hash != architecture_hash(model):
        raise CheckpointError(
            path, "its model settings differ from the ones it was saved with (config hash)"
        )
    tensors = ckpt.tensors
    if any(k.startswith("generator.") for k in tensors):  # a full trainer state checkpoint
        tensors = unprefixed("generator", tensors)
    try:
        with torch.device("meta"):  # shapes only: compare with the file before allocating
            shapes = build_generator(model).state_dict()
    except ConfigError as e:
        raise CheckpointError(path, f"cannot rebuild its generator: {e}") from e
    check_module_state(shapes, tensors, path)
    module = build_generator(model)
    load_module_state(module, tensors, path)  # CheckpointError naming keys or shapes that differ
    module.eval()
    return LoadedGenerator(
        path=path,
        sha256=file_sha256(path),
        module=module,
        model=model,
        image_size=size,
        run_dir=run_dir,
        run_config=run_cfg,
        step=ckpt.step,
        extra=dict(ckpt.extra),
    )
