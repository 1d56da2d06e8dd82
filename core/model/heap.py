"""glibc malloc settings for a training process: keep freed memory for the next step.

A training step on the CPU allocates its activations afresh (about 250 MB for the bundled model
at batch 8) and frees them at the end of the backward pass. By default glibc gives the freed top
of its heap back to the kernel once it exceeds twice the largest recently freed block, so the
next step takes every page again as a page fault that the kernel zero-fills, tens of thousands
per step (bench/bench_train_step.py measures the step). Here blocks up to 32 MB come from the heap
and the heap is not trimmed, so a step reuses the pages of the one before. The peak resident size
is the same (the pages are the ones the step needed anyway; bench/bench_memory.py measures the
default tuning run's peak); it just no longer drops between steps. Only on glibc; elsewhere a no-op.
"""
from __future__ import annotations

import ctypes
import functools
import logging

from core import settings

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed: bigger blocks are still mapped and unmapped on their own
TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings to this process (once); True where glibc took them. WORKBENCH_KEEP_HEAP=0
    leaves glibc's defaults."""
    if not settings.SETTINGS.keep_heap:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.info("malloc settings not applied: freed memory goes back to the system between steps")
    return ok


def keeping() -> bool:
    """Whether this process has taken the settings (core/memory.release_freed then leaves its heap be)."""
    return keep_freed_memory.cache_info().currsize > 0 and keep_freed_memory()
