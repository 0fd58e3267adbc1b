"""Allocator settings for the processes that move artifacts in multi-megabyte blocks.

glibc serves each allocation over its mmap threshold (128 KiB at first, raised on its own
to at most 32 MiB as such blocks are freed) with a fresh ``mmap``, and gives the top of
the heap back to the kernel once more than twice that lies free there.  A block of 4 MiB
(an object-store chunk, and each copy nats-py makes of it to frame and send it) then
arrives as untouched pages: about a thousand page faults per copy, which measured 40 % of
the builder's CPU time while storing an artifact (0.42 CPU-s per 200 MB, 0.25 with the
settings below).  Serving such blocks from the heap and keeping up to
``TRIM_THRESHOLD`` of freed memory there reuses pages that are already mapped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: allocations below this come from the heap (glibc's own ceiling for its dynamic one)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory at the heap's top kept for the next blocks rather than returned at once
TRIM_THRESHOLD = 128 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_large_buffers() -> bool:
    """Apply the settings above where the C library is glibc; True if applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl has no mallopt): its defaults stay
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
               and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not applied:
        log.warning("the C library refused the allocator settings for large buffers")
    return applied
