"""Checkpoints as safetensors (never pickle), written atomically and validated on load.

A checkpoint is one ``.safetensors`` file: named tensors plus string metadata
``{"format": "fedsynth-checkpoint-1", "architecture", "config_hash", "step", "extra"}`` where
``extra`` is JSON (e.g. optimiser hyper-parameters, accountant history, RNG state). Loading
checks the format, the architecture and config hash, and (for modules) every key and shape;
anything wrong -> CheckpointError naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fedsynth.common.errors import CheckpointError
from fedsynth.common.io.atomic import atomic_path

FORMAT = "fedsynth-checkpoint-1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: CPU tensors and its metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    architecture: str
    config_hash: str
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    *,
    architecture: str,
    config_hash: str,
    step: int,
    extra: Mapping[str, Any] | None = None,
    durable: bool = True,
) -> Path:
    """Write ``tensors`` and metadata to ``path`` atomically and durably (temporary file,
    fsync, rename, directory fsync). ``durable=False`` skips the directory fsync (see
    ``atomic_path``): for files nothing is resumed from."""
    path = Path(path)
    # safetensors refuses shared or non-contiguous storage: store independent CPU copies.
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "architecture": architecture,
        "config_hash": config_hash,
        "step": str(int(step)),
        "extra": json.dumps(dict(extra or {}), sort_keys=True),
    }
    with atomic_path(path, durable=durable) as tmp:  # durable: resume finds it after a crash
        save_file(data, str(tmp), metadata=metadata)
    return path


def saved_step(path: str | Path) -> int | None:
    """The ``step`` a checkpoint was saved at (header only, no tensors read); None when the
    file is missing or not a fedsynth checkpoint."""
    try:
        return int(_read_metadata(Path(path))["step"])
    except (OSError, KeyError, ValueError, Exception):  # safetensors raises its own errors
        return None


def _read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_checkpoint(
    path: str | Path, *, architecture: str | None = None, config_hash: str | None = None
) -> Checkpoint:
    """Read and validate a checkpoint. Given ``architecture``/``config_hash``, they must match."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file does not exist")
    try:
        meta = _read_metadata(path)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"not a readable safetensors file (corrupted?): {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, f"not a fedsynth checkpoint (format {meta.get('format')!r})")
    if architecture is not None and meta.get("architecture") != architecture:
        raise CheckpointError(
            path, f"architecture {meta.get('architecture')!r}, expected {architecture!r}"
        )
    if config_hash is not None and meta.get("config_hash") != config_hash:
        raise CheckpointError(
            path,
            f"model config hash {meta.get('config_hash')} differs from this config's "
            f"{config_hash}: the network was built with other model.* settings",
        )
    try:
        extra = json.loads(meta.get("extra", "{}"))
        step = int(meta["step"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(path, f"metadata is damaged: {e}") from e
    return Checkpoint(path, tensors, meta["architecture"], meta["config_hash"], step, extra)


def check_module_state(
    expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], path: Path
) -> None:
    """CheckpointError unless ``tensors`` has exactly the keys and shapes of ``expected``
    (a state dict; tensors on the "meta" device will do: nothing is allocated)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            path,
            f"keys do not match the network: missing {missing[:5]}, unexpected {unexpected[:5]}",
        )
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(
                path, f"{k} has shape {tuple(tensors[k].shape)}, the network needs {tuple(v.shape)}"
            )


def load_module_state(module: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Load ``tensors`` into ``module`` after checking that keys and shapes match exactly."""
    expected = module.state_dict()
    check_module_state(expected, tensors, path)
    module.load_state_dict({k: tensors[k].to(v.device) for k, v in expected.items()})


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state into tensors ``state.<param>.<name>`` and JSON (param_groups,
    non-tensor state values)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict, path: Path
) -> None:
    """Inverse of optimizer_to_tensors; CheckpointError naming ``path`` if it does not fit."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]
    ]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(path, f"optimiser state does not fit: {e}") from e
    for p_state, group_params in _states_by_param(opt):
        for name, v in p_state.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.shape != group_params.shape:
                raise CheckpointError(path, f"optimiser {name} has shape {tuple(v.shape)}")


def _states_by_param(opt: torch.optim.Optimizer):
    for group in opt.param_groups:
        for p in group["params"]:
            if p in opt.state:
                yield opt.state[p], p
