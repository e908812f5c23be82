"""The 2-D tumour segmentation network of the benchmark, chosen by name from ``SEGMENTERS``.

Input: the four contrasts of a slice, float32 (B, 4, S, S) in [-1, 1] (t1, t1c, t2, flair;
-1 outside the brain), as a ``SliceCache`` stores them. Output: logits float32 (B, 4, S, S)
for the internal labels 0 background, 1 necrotic/non-enhancing core, 2 oedema, 3 enhancing.
S must be divisible by 2 ** (len(channels) - 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from fedsynth.common.config import BenchmarkConfig
from fedsynth.common.data.brats import MODALITIES
from fedsynth.common.errors import ConfigError

N_CLASSES = 4  # background + the three tumour labels (internal convention)


def _monai_unet(channels: Sequence[int], res_units: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=len(MODALITIES),
        out_channels=N_CLASSES,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=res_units,
        # Instance norm: no running statistics, so FedAvg averages only learnt weights and
        # small or tumour-poor batches do not skew the normalisation.
        norm="INSTANCE",
    )


SEGMENTERS: dict[str, Callable[[Sequence[int], int], nn.Module]] = {"unet2d": _monai_unet}


def build_segmenter(name: str, channels: Sequence[int], res_units: int = 2) -> nn.Module:
    """A freshly initialised segmenter ``name`` with U-Net widths ``channels`` (>= 2 levels)
    and ``res_units`` residual units per level."""
    if name not in SEGMENTERS:
        raise ConfigError(
            "benchmark.segmenter",
            f"unknown network {name!r}; valid: {', '.join(sorted(SEGMENTERS))}",
        )
    if len(channels) < 2:
        raise ConfigError("benchmark.channels", f"need at least 2 levels, got {list(channels)}")
    return SEGMENTERS[name](channels, res_units)


def segmenter_for(b: BenchmarkConfig) -> nn.Module:
    """The freshly initialised segmenter the benchmark section ``b`` describes."""
    return build_segmenter(b.segmenter, b.channels, b.res_units)
