"""Segmenter training augmentation: labels follow flips, background untouched, reproducible."""

import numpy as np
import torch

from fedsynth.benchmark import augment


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.full((16, 4, 32, 32), -1.0)
    x[:, :, 8:24, 6:26] = torch.linspace(-0.5, 0.5, 20)  # a "brain" with a ramp
    y = torch.zeros((16, 1, 32, 32), dtype=torch.int64)
    y[:, :, 10:14, 6:9] = 2  # an asymmetric tumour at the ramp's dark end
    return x, y


def test_flips_move_labels_with_images_and_keep_the_background():
    x, y = _batch()
    ax, ay = augment.flips_and_gain(x, y, np.random.default_rng(0))
    assert ax.shape == x.shape and ay.shape == y.shape
    for i in range(16):  # the tumour is still where the ramp is darkest after any flip
        dark = ax[i, 0][ay[i, 0] == 2].mean()
        assert dark < ax[i, 0][(ax[i, 0] > -1) & (ay[i, 0] == 0)].mean()
    # the brain box is symmetric, so flips keep the background where it was: exactly -1
    assert torch.equal((ax == -1.0).all(dim=1), (x == -1.0).all(dim=1))
    assert int((ay == 2).sum()) == int((y == 2).sum())


def test_acquisition_adds_noise_blur_gamma_inside_the_brain_only():
    x, _ = _batch()
    out = augment.acquisition(x, np.random.default_rng(1))
    outside = (x == -1.0).all(dim=1, keepdim=True).expand_as(x)
    assert torch.equal(out[outside], x[outside])
    assert out.min() >= -1.0 and out.max() <= 1.0
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.sum() >= 8  # most slices get at least one of noise, gamma or blur
    again = augment.acquisition(x, np.random.default_rng(1))
    assert torch.equal(out, again)  # the seed reproduces the batch
    assert not torch.equal(out, augment.acquisition(x, np.random.default_rng(2)))


def test_blur_keeps_a_constant_image_and_smooths_an_edge():
    flat = torch.full((4, 16, 16), 0.3)
    assert torch.allclose(augment._blur(flat, 1.0), flat, atol=1e-6)
    edge = torch.zeros((1, 16, 16))
    edge[:, :, 8:] = 1.0
    blurred = augment._blur(edge, 1.0)
    assert 0.0 < float(blurred[0, 5, 7]) < 0.5 < float(blurred[0, 5, 8]) < 1.0


def test_bias_fields_are_smooth_multiplicative_and_reproducible():
    x = torch.full((64, 4, 32, 32), -1.0)
    x[:, :, 4:28, 4:28] = 0.0  # a flat brain at half intensity
    out = augment.bias_fields(x, np.random.default_rng(3))
    assert torch.equal(out, augment.bias_fields(x, np.random.default_rng(3)))
    brain = x[0, 0] > -1
    ratio = ((out + 1) / (x + 1).clamp_min(1e-6))[:, :, brain]  # field values on the brain
    hit = (ratio - 1).abs().amax(dim=2) > 1e-4
    assert 0.15 < hit.float().mean() < 0.45  # about BIAS_PROB of (slice, contrast) pairs
    assert torch.equal(out[~hit], x[~hit])  # the others untouched
    fields = ratio[hit]
    assert (fields > 0).all()
    spread = fields.amax(dim=1) / fields.amin(dim=1)
    assert (spread > 1.0 + 1e-3).all()  # a field, not a constant gain
    # smooth: neighbouring pixels differ by far less than the field's range across the brain
    img = ((out + 1) / 2)[hit.nonzero()[0, 0], hit.nonzero()[0, 1], 4:28, 4:28]
    assert float((img[1:] - img[:-1]).abs().max()) < 0.4 * float(img.max() - img.min())  # noise: ~1


def test_acquisition_with_bias_field_keeps_the_background():
    x, _ = _batch()
    out = augment.acquisition(x, np.random.default_rng(4), bias_field=True)
    outside = (x == -1.0).all(dim=1, keepdim=True).expand_as(x)
    assert torch.equal(out[outside], x[outside])
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_correlated_noise_is_multiplicative_correlated_and_reproducible():
    x = torch.full((32, 4, 32, 32), -1.0)
    x[:, :, 4:28, 4:28] = 0.0
    out = augment.correlated_noise(x, np.random.default_rng(5))
    assert torch.equal(out, augment.correlated_noise(x, np.random.default_rng(5)))
    assert torch.equal(out[x == -1.0], x[x == -1.0])  # zero intensity stays zero: multiplicative
    d = (out - x)[:, :, 6:26, 6:26]
    hit = d.abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 8 <= int(hit.sum()) <= 24  # about TEXTURE_PROB of the slices
    n = d[hit]
    corr = (n[..., 1:, :] * n[..., :-1, :]).mean() / (n * n).mean()
    assert corr > 0.5  # neighbours move together (white noise: ~0)
    out2 = augment.acquisition(x, np.random.default_rng(6), texture=True)
    assert out2.min() >= -1.0 and out2.max() <= 1.0
