"""Configuration: YAML + overrides -> typed objects; every error names the key."""

from pathlib import Path

import pytest

from fedsynth.common.config import Config, config_from_dict, config_to_dict, load_config
from fedsynth.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHIPPED = sorted([*CONFIGS.glob("*.yaml"), *(ROOT / "simulations").glob("*.yaml")])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.name == path.stem or path.parent.name == "configs"


def test_overrides_are_typed_and_applied():
    cfg = load_config(CONFIGS / "smoke.yaml", ["train.steps=7", "privacy.enabled=false"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.privacy.enabled is False
    assert cfg.preprocess.image_size == 32  # from the file, not the default


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.stepz=3", "train.stepz"),
        ("nonsense.key=1", "nonsense"),
        ("train.lr=-1", "train.lr"),
        ("train.steps=abc", "train.steps"),
        ("privacy.delta=1.5", "privacy.delta"),
        ("split.policy=random", "split.policy"),
        ("preprocess.image_size=30", "preprocess.image_size"),
        ("train.tumour_slice_prob=2", "train.tumour_slice_prob"),
        ("data.source=cohort", "data.cohort_dir"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "smoke.yaml", [override])
    assert f"'{key}" in str(info.value)


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_round_trip_through_dict():
    cfg = load_config(CONFIGS / "demo.yaml", ["seed=3"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
