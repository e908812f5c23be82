"""Per-sample gradient formulas that Opacus 1.6's ``hooks`` mode lacks: ConvTranspose2d.

Without a formula, Opacus falls back to functorch for that layer (vmap over a re-run of the
layer per sample), which costs most of the U-Net decoder's DP overhead. The formula:

y = conv_transpose2d(x, W) is the adjoint of x' = conv2d(y', W) (same stride, padding,
dilation), so for sample n

    dL/dW[i, o, a, b] = sum_l x[n, i, l] * unfold(g)[n, (o, a, b), l]

with g = dL/dy (B, C_out, H_out, W_out) unfolded by the layer's kernel, stride, padding and
dilation into one column per input position l (H_in x W_in of them; ``output_padding`` only
adds trailing rows that no column reaches past). Groups split both channel axes. The bias
gradient is g summed over space. ``tests/test_privacy.py`` checks the result against
single-sample backward passes on the default generator.

``register()`` adds the formula to Opacus's registry (``GradSampleModule.GRAD_SAMPLERS``);
PatientDP calls it before wrapping a network, so importing this module changes nothing.
"""

from __future__ import annotations

import torch
from opacus import GradSampleModule
from torch import nn


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


def register() -> None:
    """Add the formulas above to Opacus's grad-sampler registry (idempotent)."""
    GradSampleModule.GRAD_SAMPLERS.setdefault(nn.ConvTranspose2d, conv_transpose2d_grad_sample)
