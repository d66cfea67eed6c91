"""The workflow page's live feed, shared by every dashboard following the same workflow.

A hundred dashboards polling every 2 s are 50 feed requests a second. Each answer is computed at most once per
:data:`FRESH` seconds per workflow, whoever asks (the others wait for that computation, then reuse it): between
two computations an answer costs no database read at all, and a computation costs one indexed read (the
newest event id) when nothing happened, the states of the drawn nodes and the counts when something did. An
answer is at most FRESH seconds old: the page's poll interval is longer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from broker.api.identity import scope_of
from broker.errors import NotFound
from broker.persistence.models import Workflow
from broker.ui import queries

#: seconds an answer is reused for
FRESH = 1.0
#: workflows whose answers are kept (the oldest go first)
CAPACITY = 1000


@dataclass(slots=True)
class _Entry:
    owner_id: int
    last: int
    at: float
    answer: dict[str, Any]


class LiveFeeds:
    """Global id -> the latest live answer of that workflow; thread-safe."""

    def __init__(self, fresh: float = FRESH, capacity: int = CAPACITY, clock: Any = time.monotonic):
        self.fresh, self.capacity, self.clock = fresh, capacity, clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def answer(self, sessions: Any, user: Any, global_id: str, after: int) -> dict[str, Any]:
        """What changed on the workflow's page since event ``after`` (``{"last": after}``: nothing).
        Raises NotFound for a workflow the user may not see."""
        entry = self._fresh(global_id)
        if entry is None:
            with self._lock:
                lock = self._locks.setdefault(global_id, threading.Lock())
            with lock:  # one computation per workflow at a time; those waiting reuse its answer
                entry = self._fresh(global_id) or self._compute(sessions, global_id)
        scope = scope_of(user)
        if scope is not None and entry.owner_id != scope:
            raise NotFound(f"no workflow {global_id}")
        return {"last": entry.last} if entry.last == after else entry.answer

    def _fresh(self, global_id: str) -> _Entry | None:
        entry = self._entries.get(global_id)
        return entry if entry is not None and self.clock() - entry.at < self.fresh else None

    def _compute(self, sessions: Any, global_id: str) -> _Entry:
        from broker.ui.pages import drawn

        with sessions() as s:
            found = s.execute(select(Workflow.id).where(Workflow.global_id == global_id)).scalar()
            if found is None:
                raise NotFound(f"no workflow {global_id}")
            # the cursor first, the state after it: a change committed in between then has a newer event than
            # the cursor and reaches the page at its next poll (each statement reads what is committed when it
            # runs), instead of being taken for the state the cursor already stands for
            last = queries.last_event_id(s, found)
            row = s.execute(select(Workflow.id, Workflow.owner_id, Workflow.state)
                            .where(Workflow.id == found)).first()
            known = self._entries.get(global_id)
            if known is not None and known.last == last and known.answer.get("state") == row.state:
                answer = known.answer  # nothing happened: nothing to read again
            else:
                shown = drawn(s, row.id)
                counts = queries.node_counts(s, row.id)
                answer = {"last": last, "state": row.state, "counts": counts,
                          "progress": [sum(n for st, n in counts.items() if st in queries.DONE_STATES),
                                       sum(counts.values())],
                          "nodes": {str(n.id): n.state for n in shown.nodes},
                          "sweeps": {str(k): v for k, v in shown.sweeps.items()}}
        entry = _Entry(row.owner_id, last, self.clock(), answer)
        with self._lock:
            self._entries.pop(global_id, None)
            while len(self._entries) >= self.capacity:
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                self._locks.pop(oldest, None)
            self._entries[global_id] = entry
        return entry


@dataclass(slots=True)
class _Tail:
    owner_id: int
    at: float
    #: the newest events (at most TAIL of them), oldest first, as the feed sends them
    rows: list[list[Any]]
    #: whether ``rows`` holds every event there is (fewer than TAIL)
    complete: bool


#: events an events feed's shared tail holds
TAIL = 200


class EventTails:
    """(global id, level, node path) -> the newest events, read at most once per FRESH seconds whoever asks:
    a page following the events gets the ones after its last from memory, unless it is further behind than
    the tail reaches (then it reads them itself)."""

    def __init__(self, fresh: float = FRESH, capacity: int = CAPACITY, clock: Any = time.monotonic):
        self.fresh, self.capacity, self.clock = fresh, capacity, clock
        self._entries: dict[tuple[str, int, str | None], _Tail] = {}
        self._locks: dict[tuple[str, int, str | None], threading.Lock] = {}
        self._lock = threading.Lock()

    def answer(self, sessions: Any, user: Any, global_id: str, level: int, path: str | None,
               after: int, row: Any) -> list[list[Any]]:
        """The events after id ``after``, oldest first, at most TAIL; ``row(event)`` gives an event as sent."""
        key = (global_id, level, path)
        entry = self._fresh(key)
        if entry is None:
            with self._lock:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                entry = self._fresh(key) or self._read(sessions, key, row)
        scope = scope_of(user)
        if scope is not None and entry.owner_id != scope:
            raise NotFound(f"no workflow {global_id}")
        if entry.complete or (entry.rows and after >= entry.rows[0][0] - 1):
            return [r for r in entry.rows if r[0] > after]
        with sessions() as s:  # further behind than the tail: its own read
            workflow_id = s.execute(select(Workflow.id).where(Workflow.global_id == global_id)).scalar_one()
            return [row(e) for e in queries.events(s, workflow_id, after, level, TAIL, path)]

    def _fresh(self, key: tuple[str, int, str | None]) -> _Tail | None:
        entry = self._entries.get(key)
        return entry if entry is not None and self.clock() - entry.at < self.fresh else None

    def _read(self, sessions: Any, key: tuple[str, int, str | None], row: Any) -> _Tail:
        global_id, level, path = key
        with sessions() as s:
            found = s.execute(select(Workflow.id, Workflow.owner_id).where(Workflow.global_id == global_id)).first()
            if found is None:
                raise NotFound(f"no workflow {global_id}")
            rows = [row(e) for e in queries.events(s, found.id, 0, level, TAIL, path, newest=True)]
        entry = _Tail(found.owner_id, self.clock(), rows, len(rows) < TAIL)
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.capacity:
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                self._locks.pop(oldest, None)
            self._entries[key] = entry
        return entry
