"""vaelab: variational autoencoders with trustworthy log-likelihood numbers."""

import os

# torch's OpenMP threads spin while they wait for work; on a CPU that other jobs share they then hold
# cores their partners need and training slows several times over (bench/loaded_cpu.py,
# docs/performance.md). Sleeping waiters cost small steps dearly on an idle machine, which is why a
# training with small steps runs on one thread (training/threads.py); large steps lose ~6 %. libgomp reads
# this once, when torch is first imported, so it is set here, before any vaelab module imports torch;
# a value the user exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
