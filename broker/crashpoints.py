"""Crash points for the recovery tests: die with SIGKILL at a named place, when a test asks for it.

The windows a crash test must hit (between committing an expansion and finishing it, between a launch
intent and the process start, between a payload's end and its result's commit) are too narrow to hit
with a kill from outside. A test sets ``BROKER_TEST_CRASH=<point>:<n>`` and the broker kills itself
the n-th time it reaches that point. Without the variable, :func:`crash_point` is one dict lookup.

Points: ``expansion`` (an expansion's rows are written, not yet committed), ``launch-intent`` (a launch
intent is committed, its process not yet started), ``launched`` (its process started, its start not yet sent
to the writer), ``exit`` (a payload ended, its result not yet sent
to the writer), ``relay-published`` (the bus confirmed a window holding a workflow's events, the relay has not
marked it sent yet).

Hold points (:func:`hold_point`) pause instead: ``BROKER_TEST_HOLD=<point>:<file>`` makes the process wait at
the point until the file exists. Point: ``serve-start`` (``broker serve`` has opened its port, the engine has
not started).
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


#: environment variable naming a hold point and the file whose appearance releases it
HOLD_VARIABLE = "BROKER_TEST_HOLD"
#: seconds a hold point waits at most for its file
HOLD_LIMIT = 300.0

_hold_point, _, _hold_file = os.environ.get(HOLD_VARIABLE, "").partition(":")


def hold_point(name: str) -> None:
    """Wait at ``name`` until the file named by ``BROKER_TEST_HOLD=<name>:<path>`` exists (at most
    :data:`HOLD_LIMIT` seconds): a test sees the process in the state it has there (``broker serve``
    answering ``starting``) for as long as it needs, without guessing at timing."""
    if name != _hold_point or not _hold_file:
        return
    import time

    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(_hold_file) and time.monotonic() < deadline:
        time.sleep(0.05)  # a test seam only: polled, no cost without the variable
