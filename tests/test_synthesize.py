"""`fedsynth synthesize`: a tiny generator -> a readable BraTS cohort with a datasheet."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fedsynth.cli import main
from fedsynth.common.config import config_to_yaml, load_config
from fedsynth.common.errors import CheckpointError, ForeignFolderError, OutputExistsError
from fedsynth.common.io.checkpoints import save_checkpoint
from fedsynth.common.models.registry import architecture_hash, build_generator
from fedsynth.common.privacy.binding import PRIVACY_KEY, checkpoint_summary
from fedsynth.common.privacy.report import SitePrivacy, write_privacy_json
from fedsynth.common.rundir import RunDir
from fedsynth.synthesis.generate import synthesize

OVERRIDES = [
    "synthesis.atlas_voxel_size=6",
    "synthesis.atlas_anatomies=3",
    "synthesis.cases=2",
    "synthesis.p_scale=1.0",
    "synthesis.p_remove=0.0",
    "synthesis.device=cpu",
]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG, OVERRIDES)


def _save_central(cfg, path: Path, model=None) -> Path:
    """A generator checkpoint as central training writes it (checkpoints module format)."""
    model = model or cfg.model
    gen = build_generator(model)
    return save_checkpoint(
        path,
        gen.state_dict(),
        architecture=model.generator,
        config_hash=architecture_hash(model),
        step=7,
        extra={"model": asdict(model), "image_size": cfg.preprocess.image_size},
    )


def _federated_run(cfg, run_dir: Path, dp: bool, eps: dict | None = None) -> Path:
    """A federated run directory as the server leaves it: config.yaml, privacy.json, then
    checkpoints/generator.safetensors bound to it (its digest in the metadata),
    server_state.json."""
    from fedsynth.server import checkpointing

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    weights = {k: v.numpy() for k, v in build_generator(cfg.model).state_dict().items()}
    if eps is None:
        eps = {"site-0": 2.5, "site-1": 4.0} if dp else {"site-0": math.inf, "site-1": math.inf}
    sites = {s: SitePrivacy(epsilon=e, sample_rate=0.2, steps=30) for s, e in eps.items()}
    report = write_privacy_json(
        run_dir / "privacy.json", accountant="rdp", delta=1e-4, dp_enabled=dp, sites=sites
    )
    rounds = 3 if not (run_dir / "server_state.json").exists() else 4
    extra = {PRIVACY_KEY: checkpoint_summary(report)}
    path = checkpointing.save_checkpoint(run_dir, cfg, rounds, weights, extra)
    state = checkpointing.ServerState(round=rounds, rounds=rounds, checkpoint=path.name)
    checkpointing.commit_round(run_dir, state)
    return RunDir(run_dir).generator


def test_cohort_is_valid_readable_and_documented(cfg, tmp_path):
    from fedsynth.common.data.validate import validate_cohort

    ckpt = _save_central(cfg, tmp_path / "gen.safetensors")
    result = synthesize(cfg, ckpt, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert result.cases == 2 and result.slices > 0
    report = validate_cohort(out)
    assert [c.problems for c in report.cases] == [[], []]
    seg = nib.load(out / "synth_0000" / "synth_0000_seg.nii.gz").get_fdata()
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4} and seg.max() > 0
    t1 = nib.load(out / "synth_0000" / "synth_0000_t1.nii.gz").get_fdata()
    tissue = nib.load(out / "synth_0000" / "synth_0000_tissue.nii.gz").get_fdata()
    assert t1.shape == seg.shape == tissue.shape
    assert np.all((t1 > 0) == (tissue > 0))  # brain = nonzero voxels, as in skull-stripped BraTS
    assert (out / "manifest.csv").read_text().splitlines()[0] == "subject,scanner_site,split"
    assert (out / "contact_sheet.png").stat().st_size > 1000

    sheet = json.loads((out / "datasheet.json").read_text())
    assert sheet["generator"]["checkpoint_sha256"] == _sha256(ckpt)
    assert sheet["seed"] == cfg.synthesis.seed and sheet["cases"] == 2
    assert sheet["label_source"]["source"] == "atlas"
    assert "unknown" in sheet["privacy"]["statement"]  # no run directory beside this checkpoint
    for prov in sheet["case_provenance"]:
        assert prov["source"] == "atlas" and any(e["edit"] == "scale" for e in prov["edits"])


def test_cohort_volumes_are_the_documented_steps_applied_to_the_generator_output(cfg, tmp_path):
    """The pipeline (label cases built ahead, stored volumes computed and written in the
    writer thread, int16 straight from the slab, gzip with the RLE strategy) writes exactly
    what the documented steps give: slice, generate, unslice, stored intensity, stored
    orientation."""
    import gzip

    from fedsynth.common.io.nifti import to_stored_orientation
    from fedsynth.synthesis.generate import (
        BRATS_STORED_AXES,
        generate_slices,
        slice_case,
        to_stored_intensity,
        unslice,
    )
    from fedsynth.synthesis.generator_io import load_generator
    from fedsynth.synthesis.label_bank import build_label_bank, synthetic_label_cases

    ckpt = _save_central(cfg, tmp_path / "gen.safetensors")
    synthesize(cfg, ckpt, tmp_path / "out", progress=False)
    gen = load_generator(ckpt, fallback=cfg)
    cases = synthetic_label_cases(build_label_bank(cfg), 2, cfg.synthesis)
    for i, case in cases:
        stack = slice_case(case, gen.image_size)
        fake = generate_slices(gen.module.eval(), stack, cfg.synthesis.batch_size, "cpu")
        want = to_stored_intensity(unslice(fake, stack, case), case.brain)
        folder = tmp_path / "out" / f"synth_{i:04d}"
        for k, m in enumerate(("t1", "t1ce", "t2", "flair")):
            path = folder / f"synth_{i:04d}_{m}.nii.gz"
            img = nib.load(path)
            array, affine = to_stored_orientation(want[k], case.affine, BRATS_STORED_AXES)
            assert img.get_data_dtype() == np.int16
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), array)
            np.testing.assert_array_equal(img.affine, affine)
            assert gzip.decompress(path.read_bytes())[:4] == (348).to_bytes(4, "little")


def test_monai_reads_the_cohort(cfg, tmp_path):
    from monai.transforms import LoadImage

    synthesize(
        cfg, _save_central(cfg, tmp_path / "g.safetensors"), tmp_path / "o", 1, progress=False
    )
    img = LoadImage(image_only=True)(str(tmp_path / "o" / "synth_0000" / "synth_0000_flair.nii.gz"))
    assert img.ndim == 3 and float(img.max()) > 0


def test_same_seed_same_cohort(cfg, tmp_path):
    ckpt = _save_central(cfg, tmp_path / "gen.safetensors")
    for name in ("a", "b"):
        synthesize(cfg, ckpt, tmp_path / name, cases=1, progress=False)
    for suffix in ("t1ce", "seg", "tissue"):
        f = f"synth_0000/synth_0000_{suffix}.nii.gz"
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_federated_run_with_dp_fills_the_privacy_section(cfg, tmp_path):
    ckpt = _federated_run(cfg, tmp_path / "run", dp=True)
    synthesize(cfg, ckpt, tmp_path / "out", cases=1, progress=False)
    sheet = json.loads((tmp_path / "out" / "datasheet.json").read_text())
    priv, gen = sheet["privacy"], sheet["generator"]
    assert priv["dp_enabled"] is True and priv["worst_epsilon"] == 4.0
    assert priv["sites"] == {
        "site-0": {"epsilon": 2.5, "delta": 1e-4},
        "site-1": {"epsilon": 4.0, "delta": 1e-4},
    }
    assert gen["mode"] == "federated" and gen["rounds"] == 3
    assert gen["sites"] == ["site-0", "site-1"] and gen["run_dir"] == str(
        (tmp_path / "run").resolve()
    )


def test_run_without_dp_says_so_in_words(cfg, tmp_path):
    ckpt = _federated_run(cfg, tmp_path / "run", dp=False)
    synthesize(cfg, ckpt, tmp_path / "out", cases=1, progress=False)
    priv = json.loads((tmp_path / "out" / "datasheet.json").read_text())["privacy"]
    assert priv["dp_enabled"] is False and priv["worst_epsilon"] is None
    assert "no differential privacy" in priv["statement"]


def test_existing_output_needs_overwrite(cfg, tmp_path):
    ckpt = _save_central(cfg, tmp_path / "gen.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        synthesize(cfg, ckpt, out, cases=1, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ForeignFolderError):  # --overwrite deletes only fedsynth's folders
        synthesize(cfg, ckpt, out, cases=1, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    synthesize(cfg, ckpt, out, cases=1, overwrite=True, progress=False)  # empty: fine
    (out / "stale.txt").write_text("from an earlier synthesis")
    synthesize(cfg, ckpt, out, cases=1, overwrite=True, progress=False)
    assert not (out / "stale.txt").exists() and (out / "datasheet.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp left


def test_corrupted_checkpoint_is_a_checkpoint_error(cfg, tmp_path):
    ckpt = _save_central(cfg, tmp_path / "gen.safetensors")
    data = bytearray(ckpt.read_bytes())
    ckpt.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="gen.safetensors"):
        synthesize(cfg, ckpt, tmp_path / "out", cases=1, progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        synthesize(cfg, tmp_path / "junk.safetensors", tmp_path / "out", cases=1, progress=False)


def test_wrong_architecture_is_a_checkpoint_error(cfg, tmp_path):
    from fedsynth.common.models.registry import build_discriminator

    # Weights of a wider generator under the smoke generator's settings.
    wide = load_config(CONFIG, ["model.generator_channels=[8,16,32,128]"]).model
    save_checkpoint(
        tmp_path / "wide.safetensors",
        build_generator(wide).state_dict(),
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=1,
        extra={"model": asdict(cfg.model), "image_size": 32},
    )
    with pytest.raises(CheckpointError, match="wide.safetensors.*shape"):
        synthesize(cfg, tmp_path / "wide.safetensors", tmp_path / "out", cases=1, progress=False)
    # A discriminator is not a generator.
    save_checkpoint(
        tmp_path / "disc.safetensors",
        build_discriminator(cfg.model).state_dict(),
        architecture=cfg.model.discriminator,
        config_hash=architecture_hash(cfg.model),
        step=1,
        extra={"model": asdict(cfg.model), "image_size": 32},
    )
    with pytest.raises(CheckpointError, match="keys do not match"):
        synthesize(cfg, tmp_path / "disc.safetensors", tmp_path / "out", cases=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_cohort_and_refuses_to_overwrite(cfg, tmp_path, capsys):
    ckpt = _save_central(cfg, tmp_path / "gen.safetensors")
    args = ["synthesize", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--cases", "1"]
    args += ["--no-progress", str(CONFIG), *OVERRIDES]
    assert main(args) == 0
    assert "wrote 1 synthetic cases" in capsys.readouterr().out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    bad = [
        "synthesize",
        "--checkpoint",
        str(tmp_path / "nope.safetensors"),
        "--out",
        str(tmp_path / "x"),
    ]
    assert main(bad) == 2
    assert "does not exist" in capsys.readouterr().err


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- privacy binding


def test_a_non_dp_generator_copied_into_a_dp_run_is_refused(cfg, tmp_path):
    """The datasheet describes the checkpoint, not the folder it lies in (issue 16)."""
    dp_run = _federated_run(cfg, tmp_path / "dp-run", dp=True).parent.parent
    no_dp = _federated_run(cfg, tmp_path / "no-dp-run", dp=False)
    intruder = dp_run / "checkpoints" / "generator.safetensors"
    intruder.write_bytes(no_dp.read_bytes())  # the careless copy
    with pytest.raises(
        CheckpointError, match="dp_enabled False in the checkpoint, True in the run's record"
    ):
        synthesize(cfg, intruder, tmp_path / "out", cases=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_a_privacy_record_is_not_described_by_the_folder(cfg, tmp_path):
    run = _federated_run(cfg, tmp_path / "dp-run", dp=True).parent.parent
    foreign = _save_central(cfg, run / "checkpoints" / "from_elsewhere.safetensors")
    synthesize(cfg, foreign, tmp_path / "out", cases=1, progress=False)
    priv = json.loads((tmp_path / "out" / "datasheet.json").read_text())["privacy"]
    assert priv["dp_enabled"] is None and priv["worst_epsilon"] is None
    assert "unknown" in priv["statement"] and "epsilon" not in json.dumps(priv["sites"])


def test_an_earlier_checkpoint_of_the_run_is_described_by_its_own_record(cfg, tmp_path):
    run_dir = tmp_path / "run"
    first = _federated_run(cfg, run_dir, dp=True, eps={"site-0": 1.0, "site-1": 2.0})
    early = run_dir / "checkpoints" / "early.safetensors"
    early.write_bytes(first.read_bytes())
    _federated_run(cfg, run_dir, dp=True, eps={"site-0": 3.0, "site-1": 5.0})  # a later round
    synthesize(cfg, early, tmp_path / "out", cases=1, progress=False)
    priv = json.loads((tmp_path / "out" / "datasheet.json").read_text())["privacy"]
    assert priv["source"] == "checkpoint" and priv["worst_epsilon"] == 2.0
    synthesize(cfg, RunDir(run_dir).generator, tmp_path / "latest", cases=1, progress=False)
    priv = json.loads((tmp_path / "latest" / "datasheet.json").read_text())["privacy"]
    assert priv["source"] == "privacy.json" and priv["worst_epsilon"] == 5.0


def test_contact_mosaic_places_each_tile_in_display_view():
    """One image for the contact sheet: row r, column 0 the condition map in its colours
    (labels over tissue), columns 1-4 the four contrasts in grey; tiles in display view."""
    from fedsynth.common.data.preprocess import display_view
    from fedsynth.synthesis.datasheet import LABEL_COLOURS, contact_mosaic
    from fedsynth.synthesis.generate import SampleSlice

    rng = np.random.default_rng(0)
    samples = [
        SampleSlice(
            f"synth_{i:04d}",
            rng.integers(0, 4, (8, 8)).astype(np.uint8),
            rng.integers(0, 4, (8, 8)).astype(np.uint8),
            rng.uniform(-1, 1, (4, 8, 8)).astype(np.float32),
        )
        for i in range(3)
    ]
    mosaic = contact_mosaic(samples)
    step = 8 + 2
    assert mosaic.shape == (3 * step, 5 * step, 3) and mosaic.dtype == np.uint8
    s = samples[2]
    cond = np.where(s.labels > 0, s.labels + 3, s.tissue)
    np.testing.assert_array_equal(mosaic[20:28, 0:8], LABEL_COLOURS[display_view(cond)])
    grey = np.rint((display_view(s.images[3]) + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(mosaic[20:28, 40:48], np.stack([grey] * 3, axis=-1))
    assert np.all(mosaic[28:30] == 255)  # the gap between rows


def test_a_generator_that_outputs_nan_is_refused_and_nothing_is_written(cfg, tmp_path):
    """Cast to int16, NaN becomes 0: holes in the brain that no reader would notice."""
    import torch

    gen = build_generator(cfg.model)
    with torch.no_grad():
        next(iter(gen.parameters())).fill_(float("nan"))
    ckpt = tmp_path / "nan.safetensors"
    save_checkpoint(
        ckpt,
        gen.state_dict(),
        architecture=cfg.model.generator,
        config_hash=architecture_hash(cfg.model),
        step=1,
        extra={"model": asdict(cfg.model), "image_size": cfg.preprocess.image_size},
    )
    with pytest.raises(CheckpointError, match="non-finite"):
        synthesize(cfg, ckpt, tmp_path / "out", cases=1, progress=False)
    assert not (tmp_path / "out").exists()
