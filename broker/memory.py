"""Giving memory back to the system after big work.

A 100,000-node submission allocates hundreds of megabytes of small objects (the parsed envelope and
description, the spec, the rows, the writer's mirror of the nodes). Python frees them when the work is done,
but glibc's allocator keeps most freed pages in the process: ``broker serve`` grew from 370 MB to 1.3 GB
over two such submissions and stayed there. :func:`trim` collects the cycles such work leaves, then asks
glibc to return free pages (``malloc_trim``);
it is called after work that freed at least :data:`BIG` (a big request answered, a big workflow leaving
the writer's mirror, a big plan forgotten), never on the hot path. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: requests of this many bytes, or workflows of this many nodes, are big enough to trim after
BIG = 1024 * 1024
BIG_NODES = 10_000


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None
    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
    return function


def trim() -> None:
    """Collect garbage, then return the allocator's free memory to the system (glibc; elsewhere only the
    collection).

    The collection comes first because what big work leaves behind is mostly in reference cycles (a
    workflow's nodes and their workflow point at each other, so do spyne's request contexts): without it the
    pages are still in use when they would be returned, until Python's oldest generation is collected, which
    may be long after. A full collection costs tens of milliseconds per million objects, once per big piece
    of work.
    """
    gc.collect()
    function = _malloc_trim()
    if function is not None:
        function(0)


__all__ = ["BIG", "BIG_NODES", "trim"]
