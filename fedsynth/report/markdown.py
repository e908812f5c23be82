"""The small Markdown subset fedsynth's own writers emit, as escaped HTML.

Headings (#, ##, ###), pipe tables, bullet lists and paragraphs: enough for results.md,
audit.md and sweep.md to read as tables in the report instead of raw text. Everything is
escaped; no raw HTML passes through.
"""

from __future__ import annotations

import html


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _is_rule(line: str) -> bool:
    return set(line.replace("|", "").strip()) <= set("-: ") and "-" in line


def _table(lines: list[str]) -> str:
    header, rows = _cells(lines[0]), [_cells(r) for r in lines[1:] if not _is_rule(r)]
    head = "".join(f"<th>{_esc(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(text: str, heading_offset: int = 2) -> str:
    """Render ``text``; '#' becomes <h{1 + heading_offset}> so it nests under a section."""
    out: list[str] = []
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    for block in filter(None, blocks):
        first = block[0]
        if first.startswith("#"):
            level = min(len(first) - len(first.lstrip("#")) + heading_offset, 6)
            out.append(f"<h{level}>{_esc(first.lstrip('#').strip())}</h{level}>")
            block = block[1:]
            if not block:
                continue
        if all(line.lstrip().startswith("|") for line in block):
            out.append(_table(block))
        elif all(line.lstrip().startswith("- ") for line in block):
            items = "".join(f"<li>{_esc(line.lstrip()[2:])}</li>" for line in block)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_esc(' '.join(line.strip() for line in block))}</p>")
    return "".join(out)
