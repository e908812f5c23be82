"""Where the randomness of DP training comes from: a secret nobody outside the trainer knows.

DP-SGD protects a patient only if nobody can predict the Gaussian noise or the Poisson sample
of patients: whoever can replay a site's round (same global weights, same noise, same
sample) subtracts the noise exactly and tells neighbouring datasets apart with certainty.
A seed derived from the config (which the server writes and sends) permits exactly that.

So a DP trainer draws a 256-bit secret from the operating system's cryptographic source
(``secrets.token_bytes``) when it is created without saved state, and keeps it only in its
own state (the site's state dir; centrally the run's ``state`` checkpoints, never the
released generator). The noise generator, the patient sampler and the discriminator's
initial weights are seeded from it, each through its own keyed hash; their RNG states are
saved and restored, so a resumed trainer continues its stream without repeating noise.
Losing the state means drawing a new secret, never restarting the old stream.

``TrainingRandomness.reproducible(seed)`` derives everything from a public seed instead:
for runs without DP (nothing to protect), and for the labelled simulation option
``privacy.insecure_reproducible_noise`` (the guarantee then does not hold against anyone who
knows the config; privacy.json says so, a deployed site refuses it).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

SECRET_BYTES = 32
# Every seed is a keyed hash of the secret and a purpose, so the streams are independent.
NOISE, SAMPLING, INIT = "dp-noise", "patient-sampling", "network-init"


@dataclass(frozen=True)
class TrainingRandomness:
    """The root of a trainer's randomness. ``secret``: 32 bytes; ``reproducible``: True when
    they were derived from a public seed (then the DP noise can be replayed by anyone)."""

    secret: bytes
    reproducible: bool

    @classmethod
    def draw(cls) -> TrainingRandomness:
        """A fresh secret from the OS's cryptographic random source."""
        return cls(secrets.token_bytes(SECRET_BYTES), reproducible=False)

    @classmethod
    def reproducible_from(cls, seed: int) -> TrainingRandomness:
        """Randomness anyone who knows ``seed`` can recompute (no secret: see module doc)."""
        digest = hashlib.sha256(f"fedsynth-public-seed:{int(seed)}".encode()).digest()
        return cls(digest, reproducible=True)

    def seed(self, purpose: str, bits: int = 63) -> int:
        """A ``bits``-bit seed for ``purpose`` (NOISE, SAMPLING, INIT), a keyed hash of the
        secret: knowing one stream's seed reveals nothing about the others or the secret."""
        digest = hashlib.blake2b(purpose.encode(), key=self.secret, digest_size=32).digest()
        return int.from_bytes(digest, "big") >> (256 - bits)

    def __repr__(self) -> str:  # never print the secret (logs leave the site)
        return f"TrainingRandomness(reproducible={self.reproducible}, secret=<hidden>)"
