"""One self-contained HTML page for one run or several (a sweep): inline CSS, images as
base64 data URIs, no script and no external resource, all text escaped (html.escape).

``render_page(runs)`` takes a list of run directories so that a sweep becomes one page with
one block per run; ``write_report(run)`` writes RUN_DIR/report.html atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from fedsynth.common.errors import DataError
from fedsynth.common.io.atomic import atomic_write_text
from fedsynth.common.rundir import RunDir, SweepDir
from fedsynth.report.markdown import to_html
from fedsynth.report.sections import Section, esc, img, run_sections

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:1em 2em;color:#1b1b1b;line-height:1.45}
h1{border-bottom:2px solid #345;padding-bottom:.2em}h2{color:#234;margin-top:1.6em}
section{border-top:1px solid #ccd;margin-top:1em}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #bbc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef}
pre{background:#f6f6f8;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:.8em 0}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.8em;color:#555}
.absent{color:#777;font-style:italic}.headline{font-size:1.2em;font-weight:600}
details summary{cursor:pointer;color:#234}
"""


def _section_html(run_key: str, s: Section) -> str:
    return (
        f'<section id="{esc(run_key)}-{esc(s.id)}" data-section="{esc(s.id)}" '
        f'data-present="{str(s.present).lower()}"><h2>{esc(s.title)}</h2>{s.body}</section>'
    )


def render_run(run: Path, key: str) -> str:
    """The block of one run: a heading, a table of contents and its sections."""
    sections = run_sections(run)
    nav = "".join(f'<a href="#{esc(key)}-{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(_section_html(key, s) for s in sections)
    return f'<article id="{esc(key)}"><h1>Run {esc(run.name)}</h1><p>{esc(run.resolve())}</p><nav>{nav}</nav>{body}</article>'


def render_page(runs: Sequence[str | Path], title: str | None = None, preface: str = "") -> str:
    """The whole page for ``runs`` (one or more run directories), in the given order.

    ``preface``: HTML placed before the runs (a sweep's comparison table and plots).
    DataError naming the folder if a run directory does not exist."""
    paths = [Path(r) for r in runs]
    if not paths:
        raise ValueError("render_page needs at least one run directory")
    for p in paths:
        if not p.is_dir():
            raise DataError(p, "run directory does not exist")
    title = title or ("fedsynth report: " + ", ".join(p.name for p in paths))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    blocks = "".join(render_run(p, f"run{i}") for i, p in enumerate(paths))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><p>{esc(title)}; generated {esc(stamp)}</p></header>{preface}{blocks}"
        "</body></html>\n"
    )


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of one run to ``out`` (default RUN_DIR/report.html) atomically."""
    run = Path(run)
    path = Path(out) if out is not None else RunDir(run).report
    atomic_write_text(path, render_page([run]))
    return path


def write_sweep_report(
    runs: Sequence[str | Path], out: str | Path, title: str | None = None
) -> Path:
    """Write one page for several runs to ``out`` atomically; a sweep directory's sweep.md
    and plots/ (next to ``out``) open the page."""
    sweep = SweepDir(Path(out).parent)
    preface = ""
    if sweep.markdown.is_file():
        plots = [img(p, p.name) for p in sorted(sweep.plots.glob("*.png"))]
        preface = f'<article id="sweep">{to_html(sweep.markdown.read_text(), 0)}{"".join(plots)}</article>'
    atomic_write_text(out, render_page(runs, title, preface))
    return Path(out)
