"""Progress bars: one switch hides them all; warnings and log lines never land inside a bar."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from fedsynth.common.progress import ENV_NO_PROGRESS

# Draws a bar, and half-way through emits a warning and a log record.
_SCRIPT = textwrap.dedent(
    """
    import contextlib, logging, sys, time, warnings
    from fedsynth.common.progress import bars_and_logs, progress_bar
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    redirect = sys.argv[1] == "redirect"
    with bars_and_logs() if redirect else contextlib.nullcontext():
        for i in progress_bar(range(6), desc="working", mininterval=0):
            if i == 3:
                warnings.warn("careful-now")
                logging.getLogger("fedsynth.x").info("a-log-line")
            time.sleep(0.01)
    """
)


def _run(mode: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, check=True,
        env={**os.environ, **env}, timeout=60,
    )  # fmt: skip
    return done.stderr.decode()  # bytes: text mode would turn tqdm's \r into \n


def _line_of(text: str, needle: str) -> str:
    """What a terminal shows on the line that holds ``needle`` (text after the last \\r)."""
    line = next(x for x in text.split("\n") if needle in x)
    return line.split("\r")[-1]


def test_warnings_and_logs_get_their_own_line_above_the_bar():
    plain = _run("plain")  # without the redirect the warning is glued to the bar (the bug)
    assert _line_of(plain, "careful-now").startswith("working")
    shown = _run("redirect")
    assert "working" in shown  # the bar is drawn
    assert _line_of(shown, "careful-now").startswith("WARNING ")  # via logging, own line
    assert _line_of(shown, "careful-now").endswith("UserWarning: careful-now")
    assert _line_of(shown, "a-log-line") == "INFO a-log-line"


def test_no_progress_switch_hides_bars_in_child_processes():
    shown = _run("redirect", **{ENV_NO_PROGRESS: "1"})
    assert "working" not in shown and "careful-now" in shown and "a-log-line" in shown


def test_hidden_progress_silences_plain_tqdm_bars_in_child_processes():
    """Ray's workers and libraries draw bars with tqdm directly: TQDM_DISABLE reaches them
    (tqdm reads it at import, so in this process only progress_bar() obeys the switch)."""
    from fedsynth.common.progress import progress_hidden

    code = "from tqdm import tqdm; list(tqdm(range(3), desc='plain', mininterval=0))"

    def child_stderr() -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                              env=dict(os.environ), timeout=60)  # fmt: skip
        return done.stderr.decode()

    with progress_hidden():
        assert child_stderr() == ""
    assert "plain" in child_stderr()
