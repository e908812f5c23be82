"""Device, precision and prefetching choices (CPU here; CUDA paths are checked for their errors)."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from helpers.gan_fakes import fake_cache, tiny_config

from fedsynth.common.device import (
    Prefetcher,
    autocast,
    loader_depth,
    resolve_device,
    resolve_precision,
    to_device,
)
from fedsynth.common.errors import ConfigError

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_device_auto_cpu_and_a_clear_error_for_a_missing_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match=r"train.device.*sees no GPU.*TORCH_SPEC"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="benchmark.device.*one of auto, cpu, cuda"):
        resolve_device("tpu", key="benchmark.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA and resolve_device("cuda") == CUDA


def test_precision_is_fp32_under_dp_and_bf16_only_on_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", CUDA, dp_enabled=False) is torch.bfloat16
    assert resolve_precision("auto", CUDA, dp_enabled=True) is None  # clipping stays fp32
    assert resolve_precision("auto", CPU, dp_enabled=False) is None
    assert resolve_precision("fp32", CUDA, dp_enabled=False) is None
    assert resolve_precision("bf16", CUDA, dp_enabled=False) is torch.bfloat16
    with pytest.raises(ConfigError, match="not used with DP"):
        resolve_precision("bf16", CUDA, dp_enabled=True)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_precision("bf16", CPU, dp_enabled=False)
    with pytest.raises(ConfigError, match="train.precision.*fp16"):
        resolve_precision("fp16", CUDA, dp_enabled=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", CUDA, dp_enabled=False) is None  # e.g. a V100


def test_autocast_changes_the_matmul_dtype_only_when_asked():
    x = torch.ones(2, 3)
    with autocast(CPU, None):
        assert (x @ x.T).dtype == torch.float32
    with autocast(CPU, torch.bfloat16):  # CPU autocast shows the mechanism
        assert (x @ x.T).dtype == torch.bfloat16
    assert torch.equal(to_device((x,), CPU)[0], x)
    assert loader_depth(CPU) == 0 and loader_depth(CUDA) == 2


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_prefetcher_calls_make_exactly_n_times_in_order(depth):
    """Same calls as a plain loop: the sampling RNG advances identically (resume safety)."""
    calls, threads = [], set()

    def make() -> int:
        calls.append(len(calls))
        threads.add(threading.current_thread().name)
        return calls[-1]

    pre = Prefetcher(make, depth)
    assert list(pre.take(5)) == [0, 1, 2, 3, 4] and len(calls) == 5
    assert list(pre.take(0)) == [] and len(calls) == 5
    assert list(pre.take(3)) == [5, 6, 7] and len(calls) == 8
    main_only = threads == {threading.current_thread().name}
    assert main_only == (depth == 0)


def test_prefetcher_passes_errors_on():
    def make() -> int:
        raise RuntimeError("cache file vanished")

    with pytest.raises(RuntimeError, match="vanished"):
        list(Prefetcher(make, 2).take(3))


# --------------------------------------------------------------------------- in the trainer


def _trained(cfg, depth: int, monkeypatch) -> dict:
    import fedsynth.common.gan.trainer as trainer_module
    from fedsynth.common.gan.trainer import LocalTrainer

    monkeypatch.setattr(trainer_module, "loader_depth", lambda device: depth)
    t = LocalTrainer(cfg, fake_cache(), planned_steps=4)
    t.train_steps(2)
    t.train_steps(2)  # two calls: the prefetcher must not read ahead across them
    return {"weights": t.get_generator_weights(), "accountant": t.accountant.state_dict(),
            "rng": t.rng.bit_generator.state}  # fmt: skip


@pytest.mark.parametrize("dp", ["true", "false"])
def test_prefetching_trainer_takes_exactly_the_same_steps(dp, monkeypatch):
    """The GPU loader (2 batches ahead, in a thread) forced on the CPU: same patients sampled,
    same weights, same accountant and the sampling RNG in the same state as without it."""
    from dataclasses import fields

    import numpy as np

    from fedsynth.common.config import PrivacyConfig

    # Compare two trainers: DP noise and sampling must come from the (labelled) public seed.
    replay = [f"privacy.{f.name}=true" for f in fields(PrivacyConfig)
              if f.name == "insecure_reproducible_noise"]  # fmt: skip
    cfg = tiny_config(f"privacy.enabled={dp}", *replay)
    plain, ahead = _trained(cfg, 0, monkeypatch), _trained(cfg, 2, monkeypatch)
    assert plain["rng"] == ahead["rng"] and plain["accountant"] == ahead["accountant"]
    assert all(np.array_equal(plain["weights"][k], ahead["weights"][k]) for k in plain["weights"])


def test_trainer_refuses_bf16_with_dp_and_a_missing_gpu(monkeypatch):
    from fedsynth.common.gan.trainer import LocalTrainer

    with pytest.raises(ConfigError, match="not used with DP"):
        LocalTrainer(tiny_config("train.precision=bf16"), fake_cache(), planned_steps=4,
                     device="cuda")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'train.device': cuda was asked for"):
        LocalTrainer(tiny_config("train.device=cuda"), fake_cache(), planned_steps=4)


def test_bf16_autocast_trains_without_dp_on_cpu_parts():
    """The autocast path of a step (as on a GPU), exercised on CPU parts: finite losses,
    float32 weights; and GanParts refuses autocast together with DP engines."""
    from fedsynth.common.gan.step import GanParts, train_step
    from fedsynth.common.gan.trainer import LocalTrainer

    t = LocalTrainer(tiny_config("privacy.enabled=false"), fake_cache(), planned_steps=2)
    t.parts.amp_dtype = torch.bfloat16
    cond, real = t._next_batch()
    while cond.shape[0] == 0:
        cond, real = t._next_batch()
    losses = train_step(t.parts, cond, real)
    assert all(map(math.isfinite, (losses.d, losses.g_adv, losses.g_l1)))
    assert all(p.dtype == torch.float32 for p in t.generator.parameters())
    dp = LocalTrainer(tiny_config(), fake_cache(), planned_steps=2).parts
    with pytest.raises(ValueError, match="not used with DP"):
        GanParts(dp.generator, dp.discriminator, dp.opt_g, dp.opt_d, dp.loss, dp.dp_d, dp.dp_g,
                 amp_dtype=torch.bfloat16)  # fmt: skip
