"""Conditional PatchGAN discriminator: scores (condition, image) pairs patch by patch.

Built from MONAI's ``PatchDiscriminator`` with GroupNorm (no BatchNorm: see generator.py).
MONAI's network returns every intermediate feature map (for feature-matching losses); this
wrapper returns only the last one, the patch logits.
"""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn

from fedsynth.common.models.generator import CONDITION_CHANNELS, IMAGE_CHANNELS


class ConditionalPatchGAN(nn.Module):
    """(condition, image) -> patch logits.

    Inputs: condition (B, condition_channels, *spatial) float32 one-hot; image
    (B, image_channels, *spatial) float32 in [-1, 1]. Output: (B, 1, *patches) float32
    unbounded logits, one per receptive-field patch (larger = "looks real").
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        condition_channels: int = CONDITION_CHANNELS,
        image_channels: int = IMAGE_CHANNELS,
        channels: int = 32,
        num_layers: int = 3,
        norm_groups: int = 8,
    ):
        super().__init__()
        self.net = PatchDiscriminator(
            spatial_dims=spatial_dims,
            num_layers_d=num_layers,
            channels=channels,
            in_channels=condition_channels + image_channels,
            out_channels=1,
            norm=("group", {"num_groups": norm_groups}),
        )

    def forward(self, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([condition, image], dim=1))[-1]
