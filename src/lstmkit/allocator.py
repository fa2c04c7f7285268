"""Keeping freed memory for reuse (glibc's malloc on Linux).

A training step frees and allocates the same large buffers every window: activations, their
gradients, the logits, dropout's outputs, the weights' gradients. By default glibc serves a
block above its (adaptive) mmap threshold from a fresh mapping and unmaps it when it is freed,
and returns the free top of its heap to the system beyond a trim threshold; the next window
then faults the same memory in again, 4 KiB at a time, each page zeroed by the kernel first.
`keep_freed_memory()` fixes the mmap threshold at its largest (32 MiB) and raises the trim
threshold to about 2 GiB (mallopt's largest), so blocks up to that size are reused as they
are. The process keeps its peak memory instead of handing it back between windows, which a
training run needs again a moment later anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for it on 64-bit systems
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: about 2 GiB of free top kept

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above (once per process); False where it is not glibc's."""
    global _applied
    if _applied is None:
        _applied = _tune()
    return _applied


def _tune() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc's; musl has none
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
