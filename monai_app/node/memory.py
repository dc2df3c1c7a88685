"""Keep the node's memory flat under concurrent associations.

pynetdicom serves each association on its own thread, and glibc gives busy threads their own
malloc arenas (up to 8 per core). Datasets decoded on many threads then leave every arena
fragmented, and the node's RSS climbs with each burst of senders: measured with four concurrent
senders and the real pipeline, 799 -> 1,076 MB over 7 rounds of 24 series with glibc's default,
676 -> 712 MB with this module's cap of two arenas (705 -> 725 MB with ``MALLOC_ARENA_MAX=2``), at
the same throughput (``bench/results/node_memory_arenas.json``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

LOG = logging.getLogger(__name__)

#: ``M_ARENA_MAX`` of glibc's ``mallopt`` (malloc.h).
M_ARENA_MAX = -8
DEFAULT_MAX_ARENAS = 2


def limit_malloc_arenas(max_arenas: int = DEFAULT_MAX_ARENAS) -> bool:
    """Cap glibc's malloc arenas for threads created from now on; call before any thread starts.

    An explicit ``MALLOC_ARENA_MAX`` in the environment wins (glibc read it at start-up). Returns
    True when the cap was set here; False on other C libraries or when the environment decides.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_ARENA_MAX, max_arenas) == 1
    LOG.debug("malloc arenas limited to %d: %s", max_arenas, ok)
    return ok
