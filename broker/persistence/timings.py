"""How long the writer's commits take: a fixed-bucket histogram kept in memory, read by ``/metrics``.

The writer observes each group commit here (one lock, a few additions: nothing it would notice); the API's
metrics collector reads a snapshot at scrape time. The buckets are fixed so that the figures of two brokers
can be added up, and cumulative only when read.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

#: upper bounds of the buckets, in seconds (a commit on SQLite takes about a millisecond; on a busy
#: PostgreSQL tens; seconds mean the database is struggling or unreachable)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Observations so far: per bucket (cumulative, the last one +Inf), their count and their sum."""

    #: (upper bound, observations at most that long), ending with (inf, count)
    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


class CommitTimes:
    """Commit durations observed by the writer thread, read by any other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = [0] * (len(BUCKETS) + 1)
        self._total = 0.0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            self._counts[index] += 1
            self._total += seconds

    def snapshot(self) -> Snapshot:
        with self._lock:
            counts, total = list(self._counts), self._total
        running, buckets = 0, []
        for bound, n in zip((*BUCKETS, float("inf")), counts):
            running += n
            buckets.append((bound, running))
        return Snapshot(tuple(buckets), running, total)
