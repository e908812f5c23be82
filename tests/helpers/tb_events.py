"""Read TensorBoard event files back with TensorBoard's own reader (for the tests)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

# size_guidance 0 = keep every event (TensorBoard samples long series by default)
_KEEP_ALL = {"scalars": 0, "images": 0, "tensors": 0}


def read_runs(logdir: Path) -> dict[str, dict[str, list]]:
    """{run (folder relative to logdir, "." for logdir itself): {"scalars": {tag: [(step, value)]},
    "images": {tag: [step]}, "text": [tags]}} for every event file under ``logdir``."""
    mux = EventMultiplexer(size_guidance=_KEEP_ALL)
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    runs = {}
    for run, tags in mux.Runs().items():
        acc = mux.GetAccumulator(run)
        runs[run] = {
            "scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
            "images": {t: [e.step for e in acc.Images(t)] for t in tags["images"]},
            "text": [t for t in tags["tensors"] if t.endswith("text_summary")],
        }
    return runs
