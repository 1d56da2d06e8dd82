"""Hand freed memory back to the system after a heavy step (a generation, a log-likelihood pass, a map,
tree or forest build).

glibc keeps what a process frees in its heaps for reuse, and each thread allocates from its own arena:
Streamlit runs every page run in a new thread, so what one page's generation freed (half a GiB of
attention and logits tensors for a 3-shot comparison, measured) stayed resident while the next page
grew another arena, and the app's peak RSS added them up. `malloc_trim(0)` returns the free pages
of every arena; it takes milliseconds. Elsewhere (macOS, musl) this does nothing, and so it does in a
training process, which keeps its heap for the next step on purpose (core/model/heap.py).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys

from core.model import heap


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return None


def release_freed(collect: bool = False) -> bool:
    """Return freed heap memory to the system (collect: run the garbage collector first, for the
    reference cycles a big build leaves behind). True when the C library could trim."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None or heap.keeping():
        return False
    trim(0)
    return True
