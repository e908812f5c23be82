"""``privacy.json`` of a federated run: one entry per site, in the central trainer's format.

The server never runs an accountant; it writes what each site's accountant reported in its
last reply (epsilon so far and the mechanism history), through the shared report writer
``fedsynth.common.privacy.report``, so central and federated runs read the same.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedsynth.common.config import Config
from fedsynth.common.privacy.report import SitePrivacy, write_privacy_json
from fedsynth.common.rundir import RunDir


def site_privacy_entry(
    metrics: dict[str, float], history: dict[str, list[float]], dp: bool
) -> dict[str, Any]:
    """JSON-able per-site entry (kept in the server state) from one site reply's metrics."""
    mechanisms = [
        {"noise_multiplier": nm, "sample_rate": q, "steps": int(n)}
        for nm, q, n in zip(
            history.get("history-noise-multiplier", []),
            history.get("history-sample-rate", []),
            history.get("history-steps", []),
            strict=True,
        )
    ]
    eps = metrics["epsilon"]
    return {
        "epsilon": eps if math.isfinite(eps) else None,
        "sample_rate": metrics["sample-rate"],
        "steps": int(metrics["steps-total"]),
        "noise_multiplier": metrics["noise-multiplier"] if dp else None,
        "step_noise_multiplier": metrics["step-noise-multiplier"] if dp else None,
        "max_grad_norm": metrics["max-grad-norm"] if dp else None,
        "history": mechanisms,
    }


def write_federated_privacy(
    run_dir: Path,
    cfg: Config,
    sites: dict[str, dict[str, Any]],
    pretrained_on: dict[str, Any] | None = None,
    unreleased: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ``run_dir/privacy.json`` from the per-site entries; return what was written.
    ``pretrained_on``: the public pre-training of ``model.init`` (``public_pretraining``);
    ``unreleased``: rounds that released no generator (``ServerState.unreleased``)."""
    entries = {
        name: SitePrivacy(
            epsilon=math.inf if e["epsilon"] is None else float(e["epsilon"]),
            sample_rate=e["sample_rate"],
            steps=e["steps"],
            noise_multiplier=e["noise_multiplier"],
            step_noise_multiplier=e["step_noise_multiplier"],
            max_grad_norm=e["max_grad_norm"],
            history=e["history"],
        )
        for name, e in sites.items()
    }
    return write_privacy_json(
        RunDir(run_dir).privacy,
        accountant=cfg.privacy.accountant,
        delta=cfg.privacy.delta,
        dp_enabled=cfg.privacy.enabled,
        reproducible_noise=cfg.privacy.insecure_reproducible_noise,
        target_epsilon=cfg.privacy.target_epsilon,
        sites=entries,
        pretrained_on=pretrained_on,
        unreleased_rounds=unreleased,
    )
