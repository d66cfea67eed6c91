"""Each workflow's share of work done, as last committed: read by the API without counting nodes.

A workflow's progress (work-carrying nodes ended / all of them) took two counts over its nodes per
``getStatusInfoForId``: 19 ms at 100,000 nodes on SQLite, on the API's hottest call. The writer already
knows every tracked workflow's node counts, and hands them to its listeners after each commit; this board
keeps the two numbers per workflow. Workflows it has not heard of (finished before this broker started) are
counted once from the database and remembered: a finished workflow's counts change only through a restart,
which the writer reports again.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from broker.states import TERMINAL, WorkflowState

_DONE = frozenset(state.value for state in TERMINAL)


class ProgressBoard:
    """Global id -> (work-carrying nodes, ended ones); thread-safe; bounded (oldest entries go first)."""

    def __init__(self, capacity: int = 100_000):
        self._capacity = capacity
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, int]] = {}

    def __call__(self, workflow_id: int, global_id: str, state: WorkflowState, counts: Mapping[str, int]) -> None:
        """The writer's listener: the counts committed for one workflow (node state value -> count)."""
        total = sum(counts.values())
        done = sum(n for state_value, n in counts.items() if state_value in _DONE)
        with self._lock:
            self._counts.pop(global_id, None)  # re-inserted last: the most recently changed stay longest
            self._put(global_id, (total, done))

    def get(self, global_id: str) -> tuple[int, int] | None:
        """(total, done) as last committed, or None when this board has not heard of the workflow."""
        return self._counts.get(global_id)

    def remember(self, global_id: str, total: int, done: int) -> None:
        """Counts read from the database; never replaces what the writer reported meanwhile."""
        with self._lock:
            if global_id not in self._counts:
                self._put(global_id, (total, done))

    def _put(self, global_id: str, value: tuple[int, int]) -> None:
        if len(self._counts) >= self._capacity:
            del self._counts[next(iter(self._counts))]
        self._counts[global_id] = value
