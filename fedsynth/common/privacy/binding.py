"""Binding a generator checkpoint to the privacy record that describes it.

A run folder's ``privacy.json`` describes the run's *latest* checkpoint; a checkpoint file can
be copied anywhere (a non-DP generator dropped into a DP run's folder would otherwise get
that run's "epsilon = 10" datasheet). So every generator checkpoint carries, in its own
metadata (``extra["privacy"]``), a summary of the privacy record written with it and the
SHA-256 of that record (``record_digest``). Synthesis trusts ``privacy.json`` only when its
digest matches (``fedsynth.synthesis.datasheet``); otherwise it describes the checkpoint from
its own summary, and refuses a folder whose record contradicts it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

PRIVACY_KEY = "privacy"  # the checkpoint metadata key (``extra``) of the summary


def record_digest(report: dict[str, Any]) -> str:
    """SHA-256 of a privacy record's canonical JSON (sorted keys, no whitespace): the same
    for the dict before it is written and for the file read back."""
    blob = json.dumps(report, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def checkpoint_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's metadata says about its privacy: the record's headline and digest."""
    return {
        "dp_enabled": bool(report["dp_enabled"]),
        "worst_epsilon": report.get("worst_epsilon"),  # None: infinite (no DP)
        "delta": report.get("delta"),
        "unit": report.get("unit", "patient"),
        "accountant": report.get("accountant"),
        "sites": sorted(report.get("sites", {})),
        "record_sha256": record_digest(report),
    }


def contradictions(summary: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """Why ``report`` cannot be a privacy record of the run the checkpoint of ``summary``
    comes from (an earlier checkpoint of the same run has a smaller epsilon, nothing else
    differs); empty if it can."""
    problems = []
    for key in ("dp_enabled", "delta", "unit", "accountant"):
        mine, theirs = summary.get(key), report.get(key)
        if key == "dp_enabled":
            theirs = bool(theirs)
        if mine != theirs:
            problems.append(f"{key} {mine!r} in the checkpoint, {theirs!r} in the run's record")
    return problems
