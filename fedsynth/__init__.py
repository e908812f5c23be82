"""fedsynth: federated, differentially private synthesis of brain-tumour MRI."""

import os

# The one side effect at import, and it must precede torch's: torch's CPU thread pool
# (libgomp) reads OMP_WAIT_POLICY once, when torch is imported. By default its idle threads
# spin at every barrier; on cores shared with other processes a spinning thread burns the
# time slice its partner needs to reach the barrier. Measured on 2 shared cores (load ~20,
# benchmarks/bench_synthesis.py --wait-policies): generator inference 10-17x faster at 64 px
# and ~3x at 128 px, a training step 6-13x faster, with passive waiting. It costs little on
# an idle machine; set OMP_WAIT_POLICY=ACTIVE there to get spinning back. Ray's workers and
# Flower's simulation processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
