"""Make holoscan importable on machines without a CUDA toolkit.

Holoscan links ``libcudart.so.13`` (the CUDA *runtime*, not the driver). The
``nvidia-cuda-runtime`` wheel ships it inside site-packages, where the dynamic
loader does not look; loading it once with ``RTLD_GLOBAL`` before the first
holoscan import satisfies the dependency without ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path


def preload_cuda_runtime() -> Path | None:
    """Load the wheel's ``libcudart.so.13`` globally; return its path, or None if not installed."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        library = Path(root) / "cu13" / "lib" / "libcudart.so.13"
        if library.exists():
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            return library
    return None
