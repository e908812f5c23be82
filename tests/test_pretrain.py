"""Public pre-training: provenance, refusal of a public cohort that overlaps the sites, model.init."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from fedsynth.common.config import load_config
from fedsynth.common.data.cohort import load_split, resolve_cohort
from fedsynth.common.errors import CheckpointError, DataError
from fedsynth.common.gan.init import load_init
from fedsynth.common.rundir import PUBLIC_DATA_FILE
from fedsynth.pretrain.public import check_disjoint, fingerprint, public_config
from fedsynth.pretrain.run import pretrain

# The smoke cohort as the sites' data; a 6-subject public phantom cohort at 4 mm.
PUBLIC = (
    "pretrain.phantom.subjects=6", "pretrain.phantom.sites=2", "pretrain.phantom.voxel_size=4.0",
    "pretrain.steps=4", "pretrain.eval_every=2", "pretrain.batch_size=2",
    "pretrain.test_fraction=0.34", "train.eval_slices=4", "train.sample_slices=2",
)  # fmt: skip


def _cfg(tmp_path, *extra):
    return load_config(
        "configs/smoke.yaml", [f"data.cache_dir={tmp_path / 'cache'}", *PUBLIC, *extra]
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = _cfg(tmp)
    return cfg, pretrain(cfg, tmp / "run", progress=False)


def test_pretrain_writes_init_with_provenance_of_the_public_data(pretrained):
    cfg, path = pretrained
    init = load_init(path.parent, cfg.model, cfg.preprocess.image_size)  # a run dir works too
    public = init.provenance["public_data"]
    assert public["source"] == "phantom" and "public phantom cohort" in public["description"]
    assert len(public["manifest_sha256"]) == 64
    assert public["training_subjects"] + public["heldout_subjects"] == 6
    assert init.provenance["steps"] == 4 and init.provenance["dp"] is False
    assert init.discriminator is not None
    assert json.loads((path.parent / PUBLIC_DATA_FILE).read_text())["steps"] == 4
    metrics = [
        json.loads(line) for line in (path.parent / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [2, 4] and metrics[-1]["mean"]["ssim"] > -1


def test_pretraining_trains_every_parameter_whatever_the_sites_fine_tune(tmp_path):
    """privacy.trainable names what the sites fine-tune under DP; the public pre-training
    must still train the whole generator (it once trained only norm and bias terms of a
    random network when the config said norm+bias, and the demo's generator was static)."""
    from fedsynth.central import load_central_data
    from fedsynth.common.gan.trainer import LocalTrainer

    cfg = public_config(_cfg(tmp_path, "privacy.trainable=norm+bias"))
    trainer = LocalTrainer(cfg, load_central_data(cfg).train, planned_steps=1, site="public")
    frozen = [k for k, p in trainer.generator.named_parameters() if not p.requires_grad]
    assert not frozen, f"pre-training froze {frozen[:3]}..."


def test_public_phantom_subjects_and_scanners_differ_from_the_sites(pretrained, tmp_path):
    cfg, path = pretrained
    public = load_split(
        json.loads((path.parent / PUBLIC_DATA_FILE).read_text())["public_data"]["folder"]
    )
    subjects = [s for group in public.sites.values() for s in group] + public.test
    assert all(s.startswith("public_") for s in subjects)
    private = load_split(resolve_cohort(cfg))
    assert not set(subjects) & set(private.test + sum(private.sites.values(), []))


def test_model_init_starts_training_from_the_pretrained_weights(pretrained):
    from fedsynth.central import load_central_data
    from fedsynth.common.gan.trainer import LocalTrainer
    from fedsynth.server.app import initial_generator

    cfg, path = pretrained
    import dataclasses

    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=str(path.parent)))
    init = load_init(path, cfg.model)
    trainer = LocalTrainer(cfg, load_central_data(cfg).train, planned_steps=2)
    for k, v in trainer.generator.state_dict().items():
        torch.testing.assert_close(v, init.generator[k])
    for k, v in trainer.discriminator.state_dict().items():
        torch.testing.assert_close(v, init.discriminator[k])
    sent = initial_generator(cfg)  # what the server sends in round 1
    for k, v in sent.items():
        torch.testing.assert_close(torch.from_numpy(v), init.generator[k])


def test_model_init_with_other_model_settings_is_refused(pretrained):
    cfg, path = pretrained
    import dataclasses

    other = dataclasses.replace(cfg.model, generator_channels=[4, 8, 16, 32], norm_groups=4)
    with pytest.raises(CheckpointError, match="other model settings"):
        load_init(path, other)
    with pytest.raises(CheckpointError, match="px"):
        load_init(path, cfg.model, image_size=64)


def test_public_cohort_sharing_subject_ids_with_the_sites_is_refused(tmp_path):
    # The public phantom settings equal the sites' (same prefix, seed): the same subjects.
    cfg = _cfg(tmp_path, "pretrain.phantom.id_prefix=phantom", "pretrain.phantom.subjects=14",
               "pretrain.phantom.sites=3", "pretrain.phantom.seed=0",
               "pretrain.phantom.healthy_fraction=0.1")  # fmt: skip
    with pytest.raises(DataError, match="shares 14 subject id"):
        pretrain(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_public_cohort_holding_a_renamed_copy_of_a_site_patient_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    private = resolve_cohort(cfg)
    victim = load_split(private).sites["site-0"][0]
    public = tmp_path / "public"
    public.mkdir()
    (public / "donor_0001").mkdir()
    for f in (private / victim).resolve().iterdir():  # renamed, same voxels
        shutil.copy(f, public / "donor_0001" / f.name.replace(victim, "donor_0001"))
    with pytest.raises(
        DataError, match=rf"1 subject\(s\) have images identical.*donor_0001 = {victim}\)"
    ):
        check_disjoint(fingerprint(public), fingerprint(private))


def test_datasheets_name_the_public_data_a_generator_started_from(pretrained, tmp_path):
    from fedsynth.common.gan.init import public_pretraining
    from fedsynth.common.io.checkpoints import load_checkpoint

    cfg, path = pretrained
    own = public_pretraining(None, load_checkpoint(path).extra)  # the init file itself
    named = public_pretraining(str(path.parent), {})  # a run whose model.init names it
    for p in (own, named):
        assert "public phantom cohort" in p["public_data"] and len(p["manifest_sha256"]) == 64
        assert p["steps"] == 4 and p["dp"] is False
    assert public_pretraining(None, {}) is None  # trained from scratch
    assert "error" in public_pretraining(str(tmp_path / "gone.safetensors"), {})


def test_privacy_json_and_the_report_name_the_public_data(pretrained, tmp_path):
    """privacy.json of a federated run (the server's recorder) and of a central run, and the
    HTML report's privacy section, name the public pre-training of model.init."""
    import dataclasses

    from fedsynth.central import CentralRun, load_central_data
    from fedsynth.common.rundir import RunDir
    from fedsynth.report.sections import privacy_section
    from fedsynth.server import checkpointing
    from fedsynth.server.app import initial_generator
    from fedsynth.server.rounds import RoundRecorder
    from fedsynth.server.strategy import OK, RoundOutcome, SiteOutcome

    cfg, path = pretrained
    manifest = json.loads((path.parent / PUBLIC_DATA_FILE).read_text())["public_data"][
        "manifest_sha256"
    ]
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=str(path.parent)))
    metrics = {"num-examples": 4, "epsilon": 2.0, "delta": 1e-4, "sample-rate": 0.25,
               "steps-total": 3, "noise-multiplier": 1.0, "step-noise-multiplier": 1.4,
               "max-grad-norm": 1.0}  # fmt: skip
    site = SiteOutcome("site-0", 1, OK, metrics=metrics, history={})
    fed = tmp_path / "fed"
    RoundRecorder(fed, cfg, checkpointing.ServerState(rounds=1)).record(
        RoundOutcome(1, [site], aggregated=True), initial_generator(cfg), {}, seconds=0.1
    )
    central = RunDir(tmp_path / "central")
    central.create(cfg)
    CentralRun(cfg, central, load_central_data(cfg)).write_privacy()
    for run in (RunDir(fed), central):
        record = run.read_privacy()
        public = record["pretrained_on"]
        assert public["manifest_sha256"] == manifest and public["steps"] == 4
        assert public["training_subjects"] >= 1 and "public phantom cohort" in public["public_data"]
        assert "pre-trained without DP on public data" in record["statement"]
        assert manifest[:12] in record["statement"]
        html = privacy_section(run.root).body
        assert manifest in html and "public phantom cohort" in html

    scratch = RunDir(tmp_path / "scratch")  # no model.init: nothing to name
    scratch.create(pretrained[0])
    CentralRun(pretrained[0], scratch, load_central_data(pretrained[0])).write_privacy()
    assert scratch.read_privacy()["pretrained_on"] is None
    assert "trained from scratch" in privacy_section(scratch.root).body
