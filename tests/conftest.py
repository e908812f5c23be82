"""Fixtures shared by several test modules. Helper code (fakes, synthetic brains, the tiny
training run) lives in the ``helpers`` package beside this file."""

from __future__ import annotations

import shutil

import pytest
from helpers.tiny_run import train_tiny_run

from fedsynth.common.rundir import RunDir


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory) -> RunDir:
    """A tiny DP central run (configs/smoke.yaml, 2 steps), trained once per session.

    Read-only: tests that write into a run take ``tiny_run``, their own copy."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_run(trained_tiny_run, tmp_path_factory) -> RunDir:
    """A copy of the tiny run for one test module; it shares the original's cohort and
    slice caches (``data.cache_dir`` in its config.yaml), which nothing writes to."""
    copy = tmp_path_factory.mktemp("tiny-copy") / "run"
    shutil.copytree(trained_tiny_run.root, copy)
    return RunDir(copy)
