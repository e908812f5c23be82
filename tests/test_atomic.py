"""Atomic writes leave either the old content or the complete new one."""

import pytest

from fedsynth.common.errors import OutputExistsError
from fedsynth.common.io.atomic import atomic_directory, atomic_path, atomic_write_json


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip().startswith("{")
    assert '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_directory_refuses_existing_and_cleans_up(tmp_path):
    out = tmp_path / "cohort"
    with atomic_directory(out) as tmp:
        (tmp / "x.txt").write_text("x")
    assert (out / "x.txt").read_text() == "x"
    with pytest.raises(OutputExistsError, match="cohort"), atomic_directory(out):
        pass
    with pytest.raises(ValueError), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "y.txt").write_text("y")
        raise ValueError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]
    assert (out / "x.txt").exists() and not (out / "y.txt").exists()


def test_outputs_follow_the_umask_not_mkstemp_private_modes(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_json(target, {})
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("x")
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
