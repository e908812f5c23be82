"""The HTML report: every section, self-contained, escaped; rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedsynth.audit.writer import run_audit
from fedsynth.cli import main
from fedsynth.report.html import render_page, write_report
from fedsynth.report.sections import SECTION_IDS

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _fake_benchmark(run_root: Path) -> None:
    """A small benchmark/ folder shaped like `fedsynth benchmark` output."""
    bench = run_root / "benchmark"
    bench.mkdir()
    (bench / "results.csv").write_text(
        "arm,site,seed,region,metric,value\npooled,all,0,WT,dice,0.5\nlocal,site-0,0,WT,dice,0.25\n"
    )
    (bench / "results.md").write_text("# Segmentation benchmark\n\n| arm | Dice |\n|---|---|\n")
    shutil.copy(run_root / "plots" / "losses.png", bench / "dice_by_region.png")


@pytest.fixture(scope="module")
def full_run(tiny_run) -> Path:
    """A tiny run with every optional part: audit and benchmark."""
    run = tiny_run
    run_audit(run.root, resamples=50)
    _fake_benchmark(run.root)
    return run.root


@pytest.fixture
def bare_run(full_run, tmp_path) -> Path:
    """The same run without audit/ and benchmark/."""
    root = tmp_path / "bare"
    shutil.copytree(full_run, root, ignore=shutil.ignore_patterns("audit", "benchmark"))
    return root


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-section="([a-z]+)" data-present="(true|false)"', page))


def _external_refs(page: str) -> list[str]:
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    return [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]


def test_report_has_every_section_and_no_external_resource(full_run):
    path = write_report(full_run)
    assert path == full_run / "report.html"
    page = path.read_text()
    assert _sections(page) == {s: "true" for s in SECTION_IDS}
    assert _external_refs(page) == []
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    assert len(images) >= 2 + 1 + 1 + 3  # curves, samples, benchmark plot, audit figures
    assert "epsilon = " in page and "Threat model" in page and "not measurable" in page
    assert "site-0" in page and "test (held out)" in page and "results.csv" in page


def test_absent_sections_say_so_in_one_line(bare_run):
    page = render_page([bare_run])
    present = _sections(page)
    assert present["audit"] == "false" and present["benchmark"] == "false"
    assert present["config"] == present["privacy"] == present["samples"] == "true"
    assert "No audit/ in this run" in page and "No benchmark/ in this run" in page


def test_text_is_escaped_and_no_dp_is_stated(bare_run):
    with open(bare_run / "config.yaml", "a") as f:
        f.write('# <script>alert("x")</script> & <img src=x>\n')
    privacy = json.loads((bare_run / "privacy.json").read_text())
    privacy.update(dp_enabled=False, worst_epsilon=None, statement="no <DP> here")
    (bare_run / "privacy.json").write_text(json.dumps(privacy))
    page = render_page([bare_run])
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)" in page
    assert "<img src=x>" not in page and "no &lt;DP&gt; here" in page
    assert "epsilon = infinity (no differential privacy)" in page


def test_curves_are_drawn_from_metrics_when_plots_are_missing(bare_run):
    shutil.rmtree(bare_run / "plots")
    page = render_page([bare_run])
    assert "Drawn from metrics.jsonl." in page and _sections(page)["training"] == "true"
    (bare_run / "metrics.jsonl").unlink()
    (bare_run / "privacy.json").unlink()
    page = render_page([bare_run])
    assert _sections(page)["training"] == "false" and _sections(page)["privacy"] == "false"


def test_several_runs_become_one_page(full_run, bare_run):
    page = render_page([full_run, bare_run], title="sweep")
    assert page.count("<article ") == 2 and "<title>sweep</title>" in page
    assert 'id="run0-audit"' in page and 'id="run1-audit"' in page


def test_report_cli_prints_the_path_and_refuses_a_missing_run(full_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(full_run), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out and out.is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# Appended to a copy of the page only (the report itself has no script): once everything has
# loaded, write the number of images and of broken ones (naturalWidth 0) into the DOM.
_CHECK = """<script>window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter((i) => !i.complete || i.naturalWidth === 0).length;
  const d = document.createElement("div");
  d.id = "img-check"; d.dataset.total = imgs.length; d.dataset.broken = bad;
  document.body.appendChild(d);
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile and the flags that work offline as root."""
    if not CHROMIUM.is_file():
        if os.environ.get("FEDSYNTH_REQUIRE_CHROMIUM") == "1":  # set by .ci/run
            pytest.fail(f"{CHROMIUM} is missing but FEDSYNTH_REQUIRE_CHROMIUM=1 (make browser)")
        pytest.skip(f"{CHROMIUM} is not installed (make browser, as root)")
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium_without_broken_images(full_run, tmp_path):
    page = write_report(full_run).read_text().replace("</body>", _CHECK + "</body>")
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'id="img-check" data-total="(\d+)" data-broken="(\d+)"', dom)
    assert found, f"the check script did not run; DOM starts: {dom[:300]!r}"
    total, broken = map(int, found.groups())
    assert total >= 7 and broken == 0
    assert all(f'data-section="{s}"' in dom for s in SECTION_IDS)


def test_report_screenshot_shows_a_rendered_page(full_run, tmp_path):
    """Chromium's --screenshot of the report: a PNG of the window size with real content.

    ``FEDSYNTH_REPORT_SCREENSHOT=path`` keeps a copy (how docs/images/report_screenshot.png
    was made, then shrunk; see docs/report.md).
    """
    report = write_report(full_run)
    shot = tmp_path / "report.png"
    width, height = 1100, 1400
    _chromium(
        tmp_path, "--hide-scrollbars", f"--window-size={width},{height}",
        "--virtual-time-budget=10000", f"--screenshot={shot}", report.as_uri(),
    )  # fmt: skip
    image = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert image.shape == (height, width)
    # A blank or error page is one flat colour; the report has text, tables and MRI tiles:
    # many distinct grey levels and a good share of non-white pixels.
    assert len(np.unique(image)) > 64, "the screenshot is nearly flat: the page did not render"
    assert (image < 200).mean() > 0.02
    if keep := os.environ.get("FEDSYNTH_REPORT_SCREENSHOT"):
        shutil.copy(shot, keep)
