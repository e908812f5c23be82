"""Where training runs: the device, mixed precision, and batches that keep a GPU busy.

- ``resolve_device``: ``auto`` | ``cpu`` | ``cuda`` (``train.device``, ``synthesis.device``,
  ``benchmark.device``); asking for ``cuda`` on a machine without one is an error that says
  so, not a silent fall-back to the CPU.
- ``resolve_precision``: ``train.precision`` ``auto`` | ``fp32`` | ``bf16``. bfloat16
  autocast speeds up the networks on a GPU (tensor cores) and needs no loss scaling. It is
  never used under DP: Opacus computes per-patient gradients from the activations saved in
  the forward pass, and their norms, the clipping factors and the calibrated noise must be
  exact float32 arithmetic (a bf16 norm has ~3 significant digits, so clipping could let a
  patient's gradient exceed the bound the accountant assumes). ``auto`` is bf16 on a CUDA
  device without DP, fp32 otherwise; ``bf16`` with DP is refused.
- ``Prefetcher``: builds the next batches in a background thread (patient sampling, reading
  the memory-mapped slice cache, pinning) while the GPU runs the current step, and copies
  them to the device without blocking. It calls the batch function exactly as often and in
  the same order as a plain loop, so the (secret) sampling RNG advances identically and a
  resumed run still matches an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from fedsynth.common.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
T = TypeVar("T")


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> cuda if torch sees a GPU, else cpu; ``cuda`` without one -> ConfigError."""
    if name not in DEVICES:
        raise ConfigError(key, f"must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            key,
            f"cuda was asked for but torch {torch.__version__} ({build}) sees no GPU; "
            "use auto or cpu, or install a CUDA build of torch (TORCH_SPEC in the Makefile)",
        )
    return torch.device(name)


def resolve_precision(
    name: str, device: torch.device, dp_enabled: bool, key: str = "train.precision"
) -> torch.dtype | None:
    """The autocast dtype for training steps: None (float32 throughout) or torch.bfloat16."""
    if name not in PRECISIONS:
        raise ConfigError(key, f"must be one of {', '.join(PRECISIONS)}; got {name!r}")
    if name == "fp32":
        return None
    if name == "auto":
        gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu_bf16 and not dp_enabled else None
    if dp_enabled:
        raise ConfigError(
            key,
            "bf16 is not used with DP: per-patient gradient norms, clipping and noise must "
            "be float32 (set train.precision=auto or fp32, or privacy.enabled=false)",
        )
    if device.type != "cuda":
        raise ConfigError(key, f"bf16 needs a CUDA device; training runs on {device.type}")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision around a forward pass (and its loss); a no-op for ``dtype=None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def pin(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Page-locked copies of host tensors bound for a GPU (the copy can then run async)."""
    if device.type != "cuda":
        return tuple(tensors)
    return tuple(t.pin_memory() for t in tensors)


def to_device(tensors: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Copy host tensors to ``device``; on CUDA without blocking (async from pinned memory)."""
    return tuple(t.to(device, non_blocking=device.type == "cuda") for t in tensors)


class Prefetcher:
    """Runs ``make()`` ahead of use in one background thread, ``depth`` calls ahead.

    ``depth=0`` runs it in the caller's thread (the CPU default: a second thread would only
    compete with torch's own threads for the cores). ``take(n)`` yields exactly ``n``
    results, in call order, and never calls ``make`` more than ``n`` times.
    """

    def __init__(self, make: Callable[[], T], depth: int):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        self.make, self.depth = make, depth

    def take(self, n: int) -> Iterator[Any]:
        if self.depth == 0:
            for _ in range(n):
                yield self.make()
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsynth-prefetch") as pool:
            pending: deque[Future] = deque()
            submitted = 0
            try:
                for _ in range(n):
                    while submitted < n and len(pending) <= self.depth:
                        pending.append(pool.submit(self.make))
                        submitted += 1
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()


def loader_depth(device: torch.device) -> int:
    """How many batches to build ahead: 2 on a GPU, none on the CPU."""
    return 2 if device.type == "cuda" else 0
