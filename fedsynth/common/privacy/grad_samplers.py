"""Per-sample gradient formulas for Opacus's ``hooks`` mode that fedsynth adds or replaces.

- **ConvTranspose2d**: Opacus 1.6 has no formula (it would fall back to functorch per layer,
  a vmap over a re-run of the layer per sample).
- **Conv2d**, faster than Opacus's (which unfolds the input into a (B, C_in k k, L) copy,
  nine times the activation for a 3x3 kernel, and einsums it with the output gradient):
  the per-sample weight gradients of a batch of B are the weight gradient of ONE grouped
  convolution with B x groups groups (the B samples stacked along the channel axis), which
  oneDNN computes without the unfolded copy; and a layer whose weight is frozen
  (``privacy.trainable: norm+bias`` trains only the conv biases) gets its bias gradient
  without unfolding anything (Opacus unfolds first and checks ``requires_grad`` after).

Measured on this project's layers (single thread, B = 16-32): the grouped convolution is
1.1-7x faster than the unfold when the input channels per group are a multiple of 8
(oneDNN's blocked kernels), and slower for the 7- and 11-channel inputs of the first layers
(condition, condition + image). Those are zero-padded to 8 / 16 channels first (with one
group; the padded channels get zero gradients, sliced off): with 2 threads this took the
whole 64 px DP step from 1.60x to 1.43x the non-DP step, against one weight-gradient call
per sample (benchmarks/bench_dp_step.py, both in one quiet window). Grouped layers with such
channel counts still take one call per sample.

ConvTranspose2d: y = conv_transpose2d(x, W) is the adjoint of x' = conv2d(y', W) (same
stride, padding, dilation), so for sample n

    dL/dW[i, o, a, b] = sum_l x[n, i, l] * unfold(g)[n, (o, a, b), l]

with g = dL/dy (B, C_out, H_out, W_out) unfolded by the layer's kernel, stride, padding and
dilation into one column per input position l (H_in x W_in of them; ``output_padding`` only
adds trailing rows that no column reaches past). Groups split both channel axes. The bias
gradient is g summed over space.

``OPACUS_FORMULAS`` is Opacus's table plus ConvTranspose2d (the "hooks" mode);
``FAST_FORMULAS`` also replaces Conv2d (the "fast" mode, fedsynth.common.privacy.per_sample).
``tests/test_privacy.py`` checks every formula against single-sample backward passes.
"""

from __future__ import annotations

import torch
from opacus import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

# oneDNN's blocked convolution kernels need this many input channels per group; below it a
# grouped convolution falls to a slow generic kernel (measured: 1.1-1.6x slower than unfold).
_GROUPED_CHANNEL_BLOCK = 8


def conv2d_grad_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of ``layer``'s weight (B, C_out, C_in/groups, kH, kW) and bias
    (B, C_out), from its input activations (B, C_in, H, W) and the gradient of the loss with
    respect to its output, ``backprops`` (B, C_out, H_out, W_out)."""
    x = activations[0].to(backprops.dtype)
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros" or x.shape[0] == 0:
        return compute_conv_grad_sample(layer, [x], backprops)  # cases not needed here
    ret: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        per_group = layer.in_channels // layer.groups
        if per_group % _GROUPED_CHANNEL_BLOCK == 0:
            fn = _grouped_weight_grad
        elif layer.groups == 1:
            fn = _padded_weight_grad
        else:
            fn = _looped_weight_grad
        ret[layer.weight] = fn(layer, x.contiguous(), backprops.contiguous())
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret


def _grouped_weight_grad(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # Samples stacked along channels: (1, B C_in, H, W) through a conv with B x groups groups
    # has weight gradient (B C_out, C_in/groups, kH, kW) = the B per-sample gradients.
    n = x.shape[0]
    w = torch.nn.grad.conv2d_weight(
        x.reshape(1, -1, *x.shape[2:]),
        (n * layer.out_channels, *layer.weight.shape[1:]),
        g.reshape(1, -1, *g.shape[2:]),
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
        groups=n * layer.groups,
    )  # fmt: skip
    return w.reshape(n, *layer.weight.shape)


def _padded_weight_grad(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # Zero input channels up to the block size, the grouped convolution, then the real
    # channels' slice: the padded channels only add zero gradients.
    c = layer.in_channels
    padded = -(-c // _GROUPED_CHANNEL_BLOCK) * _GROUPED_CHANNEL_BLOCK
    xp = nn.functional.pad(x, (0, 0, 0, 0, 0, padded - c))
    n = x.shape[0]
    w = torch.nn.grad.conv2d_weight(
        xp.reshape(1, -1, *x.shape[2:]),
        (n * layer.out_channels, padded, *layer.kernel_size),
        g.reshape(1, -1, *g.shape[2:]),
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=n,
    )  # fmt: skip
    return w.reshape(n, layer.out_channels, padded, *layer.kernel_size)[:, :, :c].contiguous()


def _looped_weight_grad(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    shape = tuple(layer.weight.shape)
    return torch.stack([
        torch.nn.grad.conv2d_weight(
            x[i : i + 1], shape, g[i : i + 1], stride=layer.stride, padding=layer.padding,
            dilation=layer.dilation, groups=layer.groups,
        )
        for i in range(x.shape[0])
    ])  # fmt: skip


def conv_transpose2d_grad_sample(
    layer: nn.ConvTranspose2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of ``layer``'s weight (B, C_in, C_out/groups, kH, kW) and bias
    (B, C_out), from its input activations (B, C_in, H_in, W_in) and the gradient of the loss
    with respect to its output, ``backprops`` (B, C_out, H_out, W_out)."""
    x = activations[0].to(backprops.dtype)
    n, c_in, h_in, w_in = x.shape
    groups = layer.groups
    ret: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        cols = nn.functional.unfold(
            backprops,
            kernel_size=layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )  # (B, C_out * kH * kW, L)
        positions = h_in * w_in
        if cols.shape[-1] != positions:  # cannot happen for a consistent layer; be explicit
            raise RuntimeError(
                f"ConvTranspose2d per-sample gradient: {cols.shape[-1]} columns for "
                f"{positions} input positions"
            )
        xg = x.reshape(n, groups, c_in // groups, positions)
        cg = cols.reshape(n, groups, -1, positions)
        grad = torch.einsum("ngil,ngkl->ngik", xg, cg)
        ret[layer.weight] = grad.reshape(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret


# Opacus's formula table with fedsynth's entries (Opacus's global table is left as it is).
OPACUS_FORMULAS = {
    **GradSampleModule.GRAD_SAMPLERS,
    nn.ConvTranspose2d: conv_transpose2d_grad_sample,
}
FAST_FORMULAS = {**OPACUS_FORMULAS, nn.Conv2d: conv2d_grad_sample}
