"""Synthesis stages overlapped in threads (fedsynth/synthesis/pipeline.py): same order, same
items, errors surface in the caller; and the CPU batch cap of generate.py."""

from __future__ import annotations

import threading

import pytest

from fedsynth.synthesis.generate import slices_per_batch
from fedsynth.synthesis.pipeline import BackgroundWriter, prefetch


def test_prefetch_yields_every_item_in_order_from_another_thread():
    threads = set()

    def produce():
        for i in range(7):
            threads.add(threading.get_ident())
            yield i

    assert list(prefetch(produce(), depth=2)) == list(range(7))
    assert threads and threading.get_ident() not in threads


def test_prefetch_raises_the_producers_error_at_its_item():
    def produce():
        yield 1
        raise ValueError("bad label map")

    got = []
    with pytest.raises(ValueError, match="bad label map"):
        for item in prefetch(produce()):
            got.append(item)
    assert got == [1]


def test_writer_runs_jobs_in_order_and_raises_their_error():
    done = []
    with BackgroundWriter(max_pending=1) as writer:
        for i in range(5):
            writer.submit(done.append, i)
    assert done == list(range(5))

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter() as writer:
        writer.submit(fail)


def test_cpu_batches_are_capped_by_pixels_not_on_cuda():
    assert slices_per_batch(16, 64, "cpu") == 16
    assert slices_per_batch(16, 128, "cpu") == 4
    assert slices_per_batch(16, 256, "cpu") == 1
    assert slices_per_batch(16, 128, "cuda:0") == 16


def test_stored_volumes_equal_unslice_then_stored_intensity():
    # The pipeline's one-pass version against the two documented steps, on an atlas case
    # (2 mm grid) and generator-like slices that also leave [-1, 1].
    import numpy as np

    from fedsynth.synthesis.generate import (
        slice_case,
        stored_volumes,
        to_stored_intensity,
        unslice,
    )
    from fedsynth.synthesis.label_bank import atlas_case

    case = atlas_case(0, 4.0, seed=1, with_tumour=True)
    stack = slice_case(case, 32)
    rng = np.random.default_rng(0)
    fake = rng.uniform(-1.2, 1.2, (len(stack.z), 4, 32, 32)).astype(np.float32)
    want = to_stored_intensity(unslice(fake, stack, case), case.brain)
    got = stored_volumes(fake, stack, case)
    assert want.dtype == np.float32 and got.dtype == np.int16  # what the files store
    np.testing.assert_array_equal(got, want)
    assert got[:, ~case.brain].max() == 0 and got[:, case.brain].min() >= 1


def test_generator_threads_leave_a_core_to_the_pipeline_and_restore_the_count():
    import torch

    from fedsynth.synthesis.generate import PIPELINE_CORES, generator_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with generator_threads(torch.device("cpu")):
            assert torch.get_num_threads() == 3 - PIPELINE_CORES
        assert torch.get_num_threads() == 3
        torch.set_num_threads(1)
        with generator_threads(torch.device("cpu")):
            assert torch.get_num_threads() == 1  # never below one
        torch.set_num_threads(3)
        with generator_threads("cuda:0"):  # the GPU does the work: threads untouched
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
