"""Pre-trained starting weights (``model.init``): the file ``fedsynth pretrain`` writes.

``init.safetensors`` holds ``generator.*`` (the EMA generator of the public pre-training) and
``discriminator.*`` tensors, plus metadata: the model section it was built with, the image
size, and its provenance (which public cohort, its manifest hash, the config, the steps).
Only public data went into it, so sites and the server may start from it freely; the
provenance is what privacy.json, the datasheet and the report cite.

``model.init`` may name the file or the pre-training run directory that holds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedsynth.common.config import ModelConfig
from fedsynth.common.errors import CheckpointError
from fedsynth.common.io import checkpoints as ckpt
from fedsynth.common.models.registry import architecture_hash
from fedsynth.common.rundir import INIT_FILE

ARCHITECTURE = "pretrained-init"


@dataclass(frozen=True)
class InitWeights:
    """A loaded init file: CPU tensors of G (and D, or None), provenance, file hash."""

    path: Path
    sha256: str
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] | None
    provenance: dict[str, Any]
    step: int

    def summary(self) -> dict[str, Any]:
        """What a run records about its start: file, hash, public data, steps."""
        return {"path": str(self.path), "sha256": self.sha256, "steps": self.step,
                **{k: self.provenance[k] for k in ("public_data",) if k in self.provenance}}  # fmt: skip


def init_path(value: str | Path) -> Path:
    """``model.init`` -> the file: the value itself, or ``<value>/init.safetensors``."""
    path = Path(value).expanduser()
    return path / INIT_FILE if path.is_dir() else path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_init(
    path: str | Path,
    *,
    generator: dict[str, torch.Tensor],
    discriminator: dict[str, torch.Tensor],
    model: ModelConfig,
    image_size: int,
    step: int,
    provenance: dict[str, Any],
) -> Path:
    """Write an init file atomically; ``provenance`` must be JSON-serialisable."""
    tensors = {
        **ckpt.prefixed("generator", generator),
        **ckpt.prefixed("discriminator", discriminator),
    }
    model_dict = asdict(model)
    model_dict["init"] = None  # the file describes its own start in provenance, not here
    return ckpt.save_checkpoint(
        path, tensors, architecture=ARCHITECTURE, config_hash=architecture_hash(model),
        step=step, extra={"model": model_dict, "image_size": image_size, "provenance": provenance},
    )  # fmt: skip


def load_init(value: str | Path, model: ModelConfig, image_size: int | None = None) -> InitWeights:
    """Read ``model.init``; CheckpointError naming the file if it is missing, foreign, or built
    for other model settings or another image size than this run's."""
    path = init_path(value)
    c = ckpt.load_checkpoint(path, architecture=ARCHITECTURE)
    if c.config_hash != architecture_hash(model):
        raise CheckpointError(
            path,
            f"pre-trained with other model settings ({c.extra.get('model')}); this run's "
            f"model section must match it (model.init is only where weights start)",
        )
    size = c.extra.get("image_size")
    if image_size is not None and size is not None and int(size) != int(image_size):
        raise CheckpointError(path, f"pre-trained at {size} px, this run uses {image_size} px")
    g = ckpt.unprefixed("generator", c.tensors)
    d = ckpt.unprefixed("discriminator", c.tensors) or None
    if not g:
        raise CheckpointError(path, "holds no generator.* tensors")
    return InitWeights(path, _sha256(path), g, d, dict(c.extra.get("provenance", {})), c.step)


def apply_init(init: InitWeights, generator: nn.Module, discriminator: nn.Module | None) -> None:
    """Load the init weights into G (and D where both exist); CheckpointError if they don't fit."""
    ckpt.load_module_state(generator, init.generator, init.path)
    if discriminator is not None and init.discriminator is not None:
        ckpt.load_module_state(discriminator, init.discriminator, init.path)


def public_pretraining(init: str | None, extra: dict[str, Any]) -> dict[str, Any] | None:
    """What a generator was pre-trained on, for datasheets and reports: read from an init
    file's own provenance (``extra`` of the checkpoint itself, e.g. the public-only arm) or
    from the file ``model.init`` names. None for a generator trained from scratch; a dict
    with "error" if the named init file can no longer be read."""
    provenance = extra.get("provenance")
    source = "this checkpoint"
    if provenance is None and init:
        path = init_path(init)
        try:
            provenance = ckpt.load_checkpoint(path, architecture=ARCHITECTURE).extra.get(
                "provenance"
            )
        except CheckpointError as e:
            return {"init": str(path), "error": str(e)}
        source = str(path)
    if not provenance:
        return None
    public = provenance.get("public_data", {})
    return {
        "init": source,
        "public_data": public.get("description"),
        "folder": public.get("folder"),
        "manifest_sha256": public.get("manifest_sha256"),
        "training_subjects": public.get("training_subjects"),
        "steps": provenance.get("steps"),
        "dp": provenance.get("dp", False),
    }
