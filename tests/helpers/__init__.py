"""Code shared by the tests (not tests themselves); shared fixtures are in tests/conftest.py.

- ``gan_fakes``: an in-memory slice cache and a tiny config for GAN, privacy, trainer tests;
- ``synthetic_brain``: tiny synthetic brains with known tissue and tumour (memory or NIfTI);
- ``tiny_run``: one tiny central training run on the smoke phantoms (audit, report);
- ``tb_events``: TensorBoard event files read back with TensorBoard's own reader.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"  # the tiny configuration every stage finishes quickly
