"""How training sites are named: ``site-<k>``, k = 0, 1, ... (the split's order).

The one place that formats and parses the name. It sits below ``common/config.py`` (which
checks ``train.site``) and ``common/data/splits.py`` (which makes the sites), so both can
import it without importing each other.
"""

from __future__ import annotations

import re

_SITE = re.compile(r"site-(\d+)")


def site_name(k: int) -> str:
    """The name of training site ``k`` (>= 0): ``site-<k>``."""
    return f"site-{int(k)}"


def site_index(name: str) -> int | None:
    """``k`` of a name ``site-<k>``; None for any other name (``test``, ``central``, ...)."""
    match = _SITE.fullmatch(name)
    return int(match.group(1)) if match else None
