"""Which intensity is "outside the brain" in a skull-stripped image.

BraTS images are skull-stripped with an exact-zero background, and fedsynth's brain mask is
the voxels that differ from the background. Normalised copies (z-scored, min-max scaled, as
many pipelines and BraTS 2013-2016 redistributions hold them) keep a constant background that
is no longer 0; taking "non-zero" as brain there turns the whole field of view into brain.
So the background is found, not assumed: the one value that most of the volume's border holds
(the field of view's faces lie outside a skull-stripped brain). An image with no such value
(not skull-stripped, or noise added to the background) is refused: fedsynth cannot separate
brain from background in it.
"""

from __future__ import annotations

import numpy as np

MIN_BORDER_FRACTION = 0.5  # the background value holds at least half of the border voxels ...
MIN_VOLUME_FRACTION = 0.05  # ... and at least this share of the whole volume


def border_voxels(volume: np.ndarray) -> np.ndarray:
    """The voxels on the six faces of a 3-D volume, flattened (corners counted repeatedly)."""
    faces = [volume[0], volume[-1], volume[:, 0], volume[:, -1], volume[:, :, 0], volume[:, :, -1]]
    return np.concatenate([f.ravel() for f in faces])


def find_background(volume: np.ndarray) -> float | None:
    """The background value of a skull-stripped 3-D image, or None when it has none.

    volume: (X, Y, Z) finite intensities. Returns the value held by at least
    ``MIN_BORDER_FRACTION`` of the border voxels and ``MIN_VOLUME_FRACTION`` of all voxels
    (0.0 for BraTS; e.g. -0.83 for a z-scored copy), else None.
    """
    border = border_voxels(volume)
    values, counts = np.unique(border, return_counts=True)
    best = int(counts.argmax())
    if counts[best] < MIN_BORDER_FRACTION * border.size:
        return None
    value = values[best]
    if np.count_nonzero(volume == value) < MIN_VOLUME_FRACTION * volume.size:
        return None
    return float(value)


def describe_missing(volume: np.ndarray) -> str:
    """Why ``find_background`` found none, for an error message."""
    border = border_voxels(volume)
    values, counts = np.unique(border, return_counts=True)
    share = counts.max() / border.size
    return (
        f"no constant background: the most common value on the volume's border covers only "
        f"{share:.0%} of it (needs {MIN_BORDER_FRACTION:.0%}). fedsynth expects skull-stripped, "
        "co-registered images whose background is one constant value (0 in BraTS); skull-strip "
        "the images (e.g. HD-BET or SynthStrip) and do not add noise or a bias to the background"
    )
