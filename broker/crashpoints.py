"""Crash points for the recovery tests: die with SIGKILL at a named place, when a test asks for it.

The windows a crash test must hit (between committing an expansion and finishing it, between a launch
intent and the process start, between a payload's end and its result's commit) are too narrow to hit
with a kill from outside. A test sets ``BROKER_TEST_CRASH=<point>:<n>`` and the broker kills itself
the n-th time it reaches that point. Without the variable, :func:`crash_point` is one dict lookup.

Points: ``expansion`` (an expansion's rows are written, not yet committed), ``launch-intent`` (a launch
intent is committed, its process not yet started), ``launched`` (its process started, its start not yet sent
to the writer), ``exit`` (a payload ended, its result not yet sent
to the writer).
"""

from __future__ import annotations

import os
import signal
import threading

#: environment variable naming the crash point and on which hit to crash; BROKER_TEST_* is the test suite's
VARIABLE = "BROKER_TEST_CRASH"

_spec = os.environ.get(VARIABLE, "")
_point, _, _nth = _spec.partition(":")
_hits = 0
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if the test asked to crash at the current hit of ``name``."""
    global _hits
    if name != _point:
        return
    with _lock:
        _hits += 1
        if _hits == int(_nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
