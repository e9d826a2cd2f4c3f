"""glibc malloc settings for a process that trains or scores with torch on the CPU.

A nano step allocates and frees activations of a few hundred KB each, hundreds of times. With
glibc's defaults much of that goes back to the kernel when it is freed (mmap'd blocks, and the
heap's top past M_TRIM_THRESHOLD), so the next step faults those pages in again and the kernel
zeroes them. Kept in the heap, they are reused: a nano step then faults about a tenth as often
(docs/performance.md, "Freed memory kept"). The process stops handing memory back between
steps, so it holds about its peak from then on.

`keep_freed_memory()` is called by polyvis's own processes that train or score (the `polyvis`
command, nano runs and expert builds), not on import and not by `polyvis.cli.main` called from
Python: a library must not change the allocator of a user's process. The serving engine's
process keeps glibc's defaults (not measured there). `POLYVIS_KEEP_FREED_MEMORY=0` leaves
glibc's defaults everywhere.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

ENV = "POLYVIS_KEEP_FREED_MEMORY"
# <malloc.h>: mallopt's parameter numbers
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): blocks below it come from the heap
MMAP_THRESHOLD = 32 * 1024 * 1024
# the heap's free top is returned to the kernel only past this
TRIM_THRESHOLD = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Have glibc keep freed blocks for reuse (see the module doc). True when set; False on a
    platform without glibc's mallopt or when `POLYVIS_KEEP_FREED_MEMORY=0`."""
    if os.environ.get(ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both set explicitly: setting either one also stops glibc adjusting the mmap threshold
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mapped and trimmed)
