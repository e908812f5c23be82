"""The Markdown subset used in reports: tables, headings, lists, paragraphs; all escaped."""

from fedsynth.report.markdown import to_html


def test_tables_headings_lists_and_paragraphs():
    text = (
        "# Title\n\nsome <b>text</b>\nwrapped\n\n- one & two\n- three\n\n"
        "## Dice\n| arm | WT |\n|---|---|\n| local | 0.5 ± 0.1 |\n| pooled | 0.7 |\n"
    )
    out = to_html(text)
    assert "<h3>Title</h3>" in out and "<h4>Dice</h4>" in out
    assert "<p>some &lt;b&gt;text&lt;/b&gt; wrapped</p>" in out
    assert "<ul><li>one &amp; two</li><li>three</li></ul>" in out
    assert "<thead><tr><th>arm</th><th>WT</th></tr></thead>" in out
    assert "<tr><td>local</td><td>0.5 ± 0.1</td></tr><tr><td>pooled</td><td>0.7</td></tr>" in out
    assert "---" not in out and "<b>" not in out


def test_heading_offset_is_capped():
    assert to_html("###### deep", heading_offset=3) == "<h6>deep</h6>"
    assert to_html("# top", heading_offset=0) == "<h1>top</h1>"
