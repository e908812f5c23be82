"""pix2pix losses, per patient: adversarial (least squares or BCE) + lambda * L1.

Every loss here returns one value PER SAMPLE, shape (B,): DP-SGD clips each patient's
gradient, so the step backpropagates the sum of these and Opacus keeps them apart.
"""

from __future__ import annotations

import torch
from monai.losses.adversarial_loss import PatchAdversarialLoss

from fedsynth.common.errors import ConfigError

GAN_LOSSES = {"lsgan": "least_squares", "bce": "bce"}  # config name -> MONAI criterion


class Pix2PixLoss:
    """Adversarial loss on patch logits plus ``l1_weight`` x mean absolute error.

    ``gan_loss``: "lsgan" (least squares, pix2pix default; targets 1 real / 0 fake, no
    activation) or "bce" (sigmoid + binary cross-entropy).
    """

    def __init__(self, gan_loss: str = "lsgan", l1_weight: float = 100.0):
        if gan_loss not in GAN_LOSSES:
            raise ConfigError("train.gan_loss", f"must be one of {', '.join(GAN_LOSSES)}")
        self.l1_weight = l1_weight
        self._adv = PatchAdversarialLoss(
            reduction="none", criterion=GAN_LOSSES[gan_loss], no_activation_leastsq=True
        )

    def _adversarial(self, logits: torch.Tensor, real: bool, for_d: bool) -> torch.Tensor:
        per_patch = self._adv(logits, target_is_real=real, for_discriminator=for_d)[0]
        return per_patch.flatten(1).mean(1)

    def discriminator(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """D loss per sample (B,): half of (real pairs -> 1) + (fake pairs -> 0), as in pix2pix."""
        return 0.5 * (
            self._adversarial(logits_real, True, True) + self._adversarial(logits_fake, False, True)
        )

    def discriminator_terms(self, logits: torch.Tensor, batch_size: int) -> torch.Tensor:
        """D loss per sample for logits of ``[real pairs; fake pairs]`` (2B, ...) -> (2B,).

        Summing entry i and i + B gives ``discriminator`` for patient i.
        """
        real = self._adversarial(logits[:batch_size], True, True)
        fake = self._adversarial(logits[batch_size:], False, True)
        return 0.5 * torch.cat([real, fake])

    def generator(
        self, logits_fake: torch.Tensor, fake: torch.Tensor, real: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial (B,), weighted L1 (B,)) for the G step; images (B, 4, S, S) in [-1, 1]."""
        adv = self._adversarial(logits_fake, True, False)
        l1 = (fake - real).abs().flatten(1).mean(1) * self.l1_weight
        return adv, l1
