"""Freed heap given back to the operating system after a large view is replaced (glibc's
``malloc_trim``; elsewhere nothing): the freed rows of a snapshot load or of a narrowed
share otherwise stay in the process's resident set."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim  # glibc only
    except (OSError, AttributeError, TypeError):
        return None
    return trim


def release_freed_memory() -> bool:
    """Collect garbage, then return the heap's free pages to the OS; False where the C
    library cannot (not glibc)."""
    gc.collect()
    trim = _trim()
    if trim is None:
        return False
    trim(0)
    return True


async def released_freed_memory() -> bool:
    """:func:`release_freed_memory` in a thread (a trim of a large heap takes milliseconds;
    ctypes releases the GIL meanwhile)."""
    return await asyncio.to_thread(release_freed_memory)
