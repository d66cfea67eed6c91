"""Giving memory back to the system after big work.

A 100,000-node submission allocates hundreds of megabytes of small objects (the parsed envelope and
description, the spec, the rows, the writer's mirror of the nodes). Python frees them when the work is done,
but glibc's allocator keeps most freed pages in the process: ``broker serve`` grew from 370 MB to 1.3 GB
over two such submissions and stayed there. :func:`trim` collects the cycles such work leaves, then asks
glibc to return free pages (``malloc_trim``);
it is called after work that freed at least :data:`BIG` (a big request answered, a big workflow leaving
the writer's mirror, a big plan forgotten), never on the hot path. Elsewhere than glibc it does nothing.

That is not enough for CPython's own allocator (pymalloc), which holds small objects in 1 MiB arenas of its
own and gives an arena back only once every object in it is gone: a few objects that outlive big work keep
whole arenas. `broker serve` grew by 25-40 MB per 100,000-node cycle that way although the objects alive
after each cycle were the same. :func:`use_malloc` runs `broker serve` with glibc's malloc for small
objects too, whose free pages :func:`trim` returns one by one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import sys
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


#: CPython reads its object allocator from this variable at start-up (PYTHONMALLOC=malloc: glibc's malloc)
ALLOCATOR = "PYTHONMALLOC"
#: set for the process :func:`use_malloc` starts, so that its children get the environment it was given
_CHOSEN = "_BROKER_CHOSE_PYTHONMALLOC"


def use_malloc() -> None:
    """Run this command again, in this process (exec: same pid, same open pipes), with CPython's small-object
    allocator replaced by glibc's malloc; returns at once when already done, when the environment chose an
    allocator (``PYTHONMALLOC``: the operator's choice stands) or elsewhere than glibc.

    Call it before any thread or connection exists. In the new process it removes the variable again, so
    that payloads and other children get the environment the broker was given.
    """
    if os.environ.pop(_CHOSEN, None) is not None:
        os.environ.pop(ALLOCATOR, None)
        return
    if os.environ.get(ALLOCATOR) or _malloc_trim() is None or not sys.orig_argv:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, ALLOCATOR: "malloc", _CHOSEN: "1"})


__all__ = ["ALLOCATOR", "BIG", "BIG_NODES", "trim", "use_malloc"]
