"""pix2pix generators: U-Nets from condition channels to four MRI contrasts in [-1, 1].

Two variants, both with GroupNorm instead of BatchNorm: BatchNorm mixes the samples of a
batch, which breaks per-sample gradients and therefore differential privacy (Opacus rejects
it).

- ``ResizeConvUNet`` (registry name ``resunet2d``, the default): strided convolutions down,
  **resize-convolution** up (nearest-neighbour upsampling, then a 3x3 convolution). A
  transposed convolution with stride 2 and kernel 3 overlaps unevenly and paints the
  checkerboard pattern pix2pix fakes are known for (Odena et al. 2016, "Deconvolution and
  Checkerboard Artifacts"); resizing first gives every output pixel the same number of
  contributions. Its modules are named ``encoder``, ``bottleneck``, ``decoder``, ``head`` so
  that a DP fine-tuning can pick a part by name (``privacy.trainable``).
- ``UNetGenerator`` (``unet2d``): MONAI's ``UNet`` with transposed convolutions, kept so that
  checkpoints trained with it still load.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

CONDITION_CHANNELS = 7  # bg, CSF, GM, WM, necrotic, oedema, enhancing (datasets.condition_channels)
IMAGE_CHANNELS = 4  # t1, t1c, t2, flair (brats.MODALITIES)
# LeakyReLU(0.2) as in pix2pix.
ACT = ("leakyrelu", {"negative_slope": 0.2})


def _conv(dims: int, cin: int, cout: int, groups: int, stride: int = 1) -> Convolution:
    """3x3 convolution, GroupNorm, LeakyReLU (MONAI's norm-dropout-act ordering)."""
    return Convolution(
        dims, cin, cout, strides=stride, kernel_size=3, act=ACT,
        norm=("group", {"num_groups": groups}),
    )  # fmt: skip


class _Up(nn.Module):
    """Resize-convolution up one level, then merge the skip connection.

    x (B, cin, s, s), skip (B, cout, 2s, 2s) -> (B, cout, 2s, 2s).
    """

    def __init__(self, dims: int, cin: int, cout: int, groups: int):
        super().__init__()
        self.resize = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = _conv(dims, cin, cout, groups)
        self.merge = _conv(dims, 2 * cout, cout, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.resize(x))
        return self.merge(torch.cat([x, skip], dim=1))


class ResizeConvUNet(nn.Module):
    """Label map (one-hot) -> images, with resize-convolution upsampling.

    Input: (B, in_channels, *spatial) float32, one-hot condition channels.
    Output: (B, out_channels, *spatial) float32 in [-1, 1] (tanh), channels t1, t1c, t2, flair.
    ``channels[i]`` is the width at 1 / 2**i of the input size; each spatial size must be
    divisible by 2 ** (len(channels) - 1). Every convolution is followed by GroupNorm with
    ``norm_groups`` groups and LeakyReLU(0.2), except the 1x1 output convolution.
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
            raise ValueError(f"ResizeConvUNet needs at least 2 levels of channels, got {channels}")
        d, g, c = spatial_dims, norm_groups, tuple(channels)
        self.stem = _conv(d, in_channels, c[0], g)
        # encoder[i]: size / 2**i, c[i] -> size / 2**(i+1), c[i+1]
        self.encoder = nn.ModuleList(
            nn.Sequential(_conv(d, c[i], c[i + 1], g, stride=2), _conv(d, c[i + 1], c[i + 1], g))
            for i in range(len(c) - 1)
        )
        self.bottleneck = _conv(d, c[-1], c[-1], g)
        # decoder[j] undoes encoder[-1 - j]
        self.decoder = nn.ModuleList(_Up(d, c[i + 1], c[i], g) for i in reversed(range(len(c) - 1)))
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        self.head = conv(c[0], out_channels, kernel_size=1)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        x = self.stem(condition)
        skips = []
        for down in self.encoder:
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.decoder, reversed(skips), strict=True):
            x = up(x, skip)
        return torch.tanh(self.head(x))


class UNetGenerator(nn.Module):
    """Label map (one-hot) -> images, MONAI ``UNet`` with transposed convolutions.

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
            act=ACT,
            norm=("group", {"num_groups": norm_groups}),
        )
        self.out = nn.Tanh()

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        return self.out(self.unet(condition))
