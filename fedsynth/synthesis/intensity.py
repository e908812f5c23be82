"""How a synthetic cohort stores intensities, and how fedsynth reads them back.

The generator outputs images already on the training data's normalised scale ([-1, 1] after
the percentile window of ``preprocess.normalise_intensity``). A synthetic cohort stores them
as int16 ``(x + 1) * INTENSITY_SCALE`` and its datasheet says so
(``layout.intensity_scale``).

Reading such a cohort back through the percentile window would not return ``x``: a generated
image is the conditional mean of an acquisition, without the noise, bias and enhancement
tails that set the real images' upper percentile, so re-windowing stretches it (measured on
the session-4 study's public-only cohort: white matter on T1 at 0.72 after re-windowing
against 0.35 on the real test patients, a shift larger than any augmentation covers).
fedsynth therefore inverts the stored scale for its own synthetic cohorts
(``stored_scale``); other tools should do the same (docs/synthesis.md).
"""

from __future__ import annotations

import json
from pathlib import Path

INTENSITY_SCALE = 500.0  # stored = (x + 1) * 500: generator range [-1, 1] -> [0, 1000]
DATASHEET = "datasheet.json"
# Datasheets written before ``layout.intensity_scale`` existed describe the same mapping in words.
_LEGACY_WORDS = "generator output [-1, 1] -> [0, 1000]"


def stored_scale(cohort_dir: str | Path) -> float | None:
    """The fixed intensity scale of a fedsynth synthetic cohort, or None for any other
    cohort (no datasheet, or one that does not describe fedsynth's stored scale)."""
    path = Path(cohort_dir) / DATASHEET
    if not path.is_file():
        return None
    try:
        layout = json.loads(path.read_text()).get("layout", {})
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return None
    if not isinstance(layout, dict):
        return None
    scale = layout.get("intensity_scale")
    if isinstance(scale, int | float) and scale > 0:
        return float(scale)
    if _LEGACY_WORDS in str(layout.get("intensity", "")):
        return INTENSITY_SCALE
    return None
