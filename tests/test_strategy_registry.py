"""The aggregation registry (fedsynth.server.strategy.STRATEGIES): every name builds its
class, an unknown name is refused with the valid ones, before a simulation writes anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, MultiKrum

from fedsynth.common.config import load_config
from fedsynth.common.errors import ConfigError
from fedsynth.server.app import settings_from_run_config
from fedsynth.server.strategy import STRATEGIES, GeneratorUpdates, build_strategy
from fedsynth.simulation import simulate

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
FLOWER_BASE = {
    "fedavg": FedAvg,
    "fedmedian": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
    "krum": MultiKrum,  # Flower's Krum is MultiKrum selecting one; ours too
    "multikrum": MultiKrum,
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_name_builds_a_screening_flower_strategy(name):
    cfg = load_config(SMOKE, [f"federation.aggregation={name}", "federation.trim_fraction=0.25"])
    strategy = build_strategy(cfg, expected_sites=4)
    assert type(strategy) is STRATEGIES[name]
    assert isinstance(strategy, GeneratorUpdates) and isinstance(strategy, FLOWER_BASE[name])
    if name == "trimmed-mean":
        assert strategy.beta == 0.25


def test_unknown_aggregation_is_refused_with_the_valid_names(tmp_path):
    cfg = load_config(SMOKE, ["federation.aggregation=fedfoo"])
    with pytest.raises(
        ConfigError,
        match="federation.aggregation.*fedavg, fedmedian, krum, multikrum, trimmed-mean",
    ):
        build_strategy(cfg, expected_sites=3)
    with pytest.raises(ConfigError, match="fedfoo"):
        simulate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="fedfoo"):
        settings_from_run_config(
            {"config": str(SMOKE), "overrides": "federation.aggregation=fedfoo"}
        )
