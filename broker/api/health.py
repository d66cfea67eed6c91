"""What ``GET /health`` answers: the service's state, one small enum that the server sets.

A load balancer sends calls only where ``/health`` answers 200. The answer is the state's name as the body, so a
person with curl sees why a broker is out of the pool:

* ``starting``  503: the port is open but the engine is not serving yet (database lock, migration, resuming);
* ``active``    200: the engine runs and holds the database (the lock on SQLite, the lease on PostgreSQL);
* ``standby``   503: another broker holds the database (PostgreSQL); waiting to take it over;
* ``api``       200 while it can read the database, else 503: an API-only process (a later change too);
* ``stopping``  503: draining after SIGTERM.

Answering costs no database query: the state is a field set by whoever changes it. Only ``api`` asks
``reachable`` (a callable the API-only process will supply), at most once per :data:`PROBE_EVERY` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class ServiceState(StrEnum):
    STARTING = "starting"
    ACTIVE = "active"
    STANDBY = "standby"
    API = "api"
    STOPPING = "stopping"


#: states in which the service takes calls (``api`` also needs the database to be readable)
SERVING = frozenset({ServiceState.ACTIVE, ServiceState.API})
#: seconds an API-only process's database probe is trusted
PROBE_EVERY = 2.0


class Health:
    """The service's state, set by the server, read by every request thread."""

    def __init__(self, state: ServiceState = ServiceState.STARTING,
                 reachable: Callable[[], bool] | None = None):
        """``reachable``: whether the database can be read (only consulted in the ``api`` state)."""
        self._state = state
        self._reachable = reachable
        self._probe_lock = threading.Lock()
        self._probed = (-PROBE_EVERY, False)

    @property
    def state(self) -> ServiceState:
        return self._state

    def set(self, state: ServiceState) -> None:
        # one attribute assignment: readers see the old or the new state, never a mix
        self._state = state

    def answer(self) -> tuple[str, bytes]:
        """(HTTP status line, body) of ``GET /health``."""
        state = self._state
        ok = state in SERVING and (state is not ServiceState.API or self._can_read())
        return ("200 OK" if ok else "503 Service Unavailable"), state.value.encode("ascii")

    def _can_read(self) -> bool:
        if self._reachable is None:
            return False
        with self._probe_lock:  # one probe at a time; the others use its answer
            at, ok = self._probed
            now = time.monotonic()
            if now - at >= PROBE_EVERY:
                try:
                    ok = bool(self._reachable())
                except Exception:
                    ok = False
                self._probed = (now, ok)
            return ok


__all__ = ["Health", "ServiceState", "SERVING"]
