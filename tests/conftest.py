"""Shared test set-up.

Holoscan needs ``libcudart.so.13`` before its first import; ``operators`` preloads it, so importing
the package here makes every test module independent of import order.
"""

import os
import warnings

os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN")
# OpenMP busy-waiting collapses 2-thread torch when another process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)

import operators  # noqa: E402,F401  (side effect: CUDA runtime preload)
