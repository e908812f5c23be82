"""pix2pix generator: a U-Net from condition channels to four MRI contrasts in [-1, 1].

Built from MONAI's ``UNet`` (strided convolutions down, transposed convolutions up, skip
connections) with GroupNorm instead of BatchNorm: BatchNorm mixes the samples of a batch,
which breaks per-sample gradients and therefore differential privacy (Opacus rejects it).
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

CONDITION_CHANNELS = 7  # bg, CSF, GM, WM, necrotic, oedema, enhancing (datasets.condition_channels)
IMAGE_CHANNELS = 4  # t1, t1c, t2, flair (brats.MODALITIES)


class UNetGenerator(nn.Module):
    """Label map (one-hot) -> images.

    Input: (B, in_channels, *spatial) float32, one-hot condition channels.
    Output: (B, out_channels, *spatial) float32 in [-1, 1] (tanh), channels t1, t1c, t2, flair.
    Each spatial size must be divisible by 2 ** (len(channels) - 1).
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        in_channels: int = CONDITION_CHANNELS,
        out_channels: int = IMAGE_CHANNELS,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        norm_groups: int = 8,
    ):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"UNetGenerator needs at least 2 levels of channels, got {channels}")
        self.unet = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            strides=(2,) * (len(channels) - 1),
            num_res_units=0,
            # LeakyReLU(0.2) as in pix2pix; GroupNorm keeps samples independent (DP-safe).
            act=("leakyrelu", {"negative_slope": 0.2}),
            norm=("group", {"num_groups": norm_groups}),
        )
        self.out = nn.Tanh()

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.out(self.unet(condition))
