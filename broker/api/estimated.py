"""Estimated ends for getStatusInfoForId, computed at most every few seconds per workflow or node.

getStatusInfoForId is the API's hottest call and clients poll it; an estimate reads the workflow's nodes and
up to :data:`broker.persistence.estimates.HISTORY_ROWS` past attempts. So each target's estimate is kept
:data:`TTL` seconds (an end time does not go stale that fast: it is a time, not a countdown), longer when it
was costly (broker.estimates.next_estimate_at), for at most :data:`CAPACITY` targets, and only running
workflows and nodes in flight are estimated at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from broker.estimates import next_estimate_at

log = logging.getLogger(__name__)

#: seconds an estimate is served again before it is computed anew
TTL = 5.0
#: most targets kept (the oldest go first)
CAPACITY = 10_000
_RUNNING = frozenset({"accepted", "running", "staging_in", "queued", "staging_out"})


class EstimateCache:
    """Global id -> (monotonic time it may be served until, Estimate or None); thread-safe."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[float, Any]] = {}
        self._clock = clock

    def get(self, api: Any, status: Any) -> Any:
        """The estimate of the target of ``status`` (a queries.Status), None when it is not running or there
        is nothing to estimate from. Never raises: an estimate is an optional part of the answer."""
        if status.state not in _RUNNING:
            return None
        return self.cached(status.global_id, lambda: _compute(api, status))

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """The estimate kept for ``key`` (a global id), else ``compute()``'s, kept :data:`TTL` seconds or
        longer when it was costly (the dashboard's pages ask through here too). Never raises."""
        now = self._clock()
        kept = self._kept.get(key)
        if kept is not None and now < kept[0]:
            return kept[1]
        try:
            estimate = compute()
        except Exception:
            log.warning("could not estimate the end of %s", key, exc_info=True)
            estimate = None
        finished = self._clock()
        with self._lock:
            self._kept.pop(key, None)
            if len(self._kept) >= CAPACITY:
                del self._kept[next(iter(self._kept))]
            # a costly estimate is kept longer: polling a huge workflow must not keep the server busy
            self._kept[key] = (next_estimate_at(now, finished, TTL), estimate)
        return estimate


def _compute(api: Any, status: Any) -> Any:
    from sqlalchemy import select

    from broker.persistence.estimates import estimate_node, estimate_workflow
    from broker.persistence.models import Node

    configured = api.settings.engine  # the [engine] settings (its broker-wide limit), not the running engine
    with api.sessions() as s:
        if status.node_path is None:
            return estimate_workflow(s, status.workflow_id, slots=configured.max_in_flight)
        node_id = s.scalar(select(Node.id).where(Node.workflow_id == status.workflow_id,
                                                 Node.path == status.node_path))
        return None if node_id is None else estimate_node(s, node_id)
