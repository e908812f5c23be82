"""Hostile NIfTI files (made here by script): refused before they can exhaust memory.

Each file claims more, or holds more, than it should: a 368-byte .nii claiming 1 GiB, a small
gzip bomb, data followed by 512 MiB of junk (a sparse file: no disk is used). The reader must
refuse each with one line naming the file, without allocating what the file claims.
"""

import gzip
import os
import subprocess
import sys
import textwrap
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from fedsynth.common.errors import DataError
from fedsynth.common.io.nifti import load_volume, read_volume, save_volume

MiB = 1 << 20


def _header_bytes(shape, dtype=np.uint8) -> bytes:
    """A valid single-file NIfTI-1 header (348 bytes + 4 extension bytes) for ``shape``."""
    img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), np.eye(4))
    img.header.set_data_shape(shape)
    return img.header.binaryblock + b"\0\0\0\0"


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            fn()
        return tracemalloc.get_traced_memory()[1] / MiB, err.value
    finally:
        tracemalloc.stop()


def test_tiny_file_claiming_a_gibibyte_is_refused_before_allocating(tmp_path):
    path = tmp_path / "claims_1gib.nii"
    path.write_bytes(_header_bytes((1024, 1024, 1024)) + bytes(16))
    assert path.stat().st_size == 368
    peak, err = _peak_mib(lambda: load_volume(path))
    assert peak < 20, f"peak {peak:.0f} MiB for a 368-byte file"
    assert err.path == path and "1073741824 bytes" in err.problem and "holds only 16" in err.problem


def test_gzip_bomb_stops_at_what_the_header_promises(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    payload = _header_bytes((10, 10, 10)) + bytes(1000) + bytes(64 * MiB)
    path.write_bytes(gzip.compress(payload, compresslevel=9))
    assert path.stat().st_size < MiB  # about 64 KB on disk
    peak, err = _peak_mib(lambda: load_volume(path))
    assert peak < 16, f"peak {peak:.0f} MiB decompressing a bomb"
    assert err.path == path and "trailing data" in err.problem


def test_gzip_header_claiming_more_than_the_limit_is_refused(tmp_path):
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes((4096, 4096, 4096), np.float32) + bytes(64)))
    with pytest.raises(DataError, match="GiB.*refusing to allocate"):
        load_volume(path)


def test_junk_after_the_data_is_refused(tmp_path):
    path = tmp_path / "junk.nii"
    save_volume(path, np.ones((4, 4, 4), np.float32), np.eye(4))
    with open(path, "r+b") as f:
        f.truncate(512 * MiB)  # sparse: 512 MiB claimed on disk, nothing written
    with pytest.raises(DataError) as err:
        load_volume(path)
    assert err.value.path == path and "bytes of trailing data" in err.value.problem


def test_junk_after_the_gzip_stream_is_refused(tmp_path):
    path = tmp_path / "tail.nii.gz"
    save_volume(path, np.ones((4, 4, 4), np.float32), np.eye(4))
    path.write_bytes(path.read_bytes() + b"appended by a broken copy tool")
    with pytest.raises(DataError, match="trailing non-gzip data"):
        load_volume(path)


def test_zero_padding_and_multi_member_gzip_are_read(tmp_path):
    data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    path = tmp_path / "ok.nii.gz"
    save_volume(path, data, np.eye(4))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:200]) + gzip.compress(raw[200:]) + bytes(512))
    np.testing.assert_array_equal(load_volume(path)[0], data)


def test_truncated_gzip_names_the_reason(tmp_path):
    path = tmp_path / "cut.nii.gz"
    save_volume(path, np.random.default_rng(0).random((8, 8, 8)).astype(np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(DataError, match=r"truncated gzip stream \(it ends before"):
        load_volume(path)


def test_out_of_memory_names_the_file(tmp_path):
    """A real MemoryError (address space capped in a child process) becomes a DataError."""
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes((512, 512, 512)) + bytes(128 * MiB), 1))
    script = textwrap.dedent(
        f"""
        import resource, sys
        from fedsynth.common.errors import DataError
        from fedsynth.common.io.nifti import load_volume
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, resource.RLIM_INFINITY))
        try:
            load_volume({str(path)!r})
        except DataError as e:
            print("DATAERROR", e)
            sys.exit(0)
        sys.exit(3)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"DATAERROR {path}: not enough memory" in done.stdout


def test_four_d_read_keeps_channels_and_stored_affine(tmp_path):
    data = np.random.default_rng(1).random((5, 6, 7, 4)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    path = tmp_path / "stack.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    volume = read_volume(path, ndim=4)
    assert volume.data.shape == (5, 6, 7, 4)
    np.testing.assert_array_equal(volume.data, data[::-1, ::-1])
    np.testing.assert_array_equal(volume.stored_affine, affine)
    with pytest.raises(DataError, match="4-D volume"):
        read_volume(path)
