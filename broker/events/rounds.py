"""What one round of the outbox relay sends, and how long it waits after failures (pure functions).

Kept apart from the relay actor (:mod:`broker.events.relay`) so that they read and test on their own.
"""

from __future__ import annotations

from broker.events import document
from broker.events.outbox import Row

#: fraction of a backoff delay added at random, so many brokers do not reconnect in step
JITTER = 0.2
#: one row ready to send: the row, and its event's (headers, body), rendered once per event
Prepared = tuple[Row, tuple[dict[str, str], bytes] | None]


def backoff_delay(failures: int, initial: float, cap: float, rand: float = 0.0) -> float:
    """Seconds to wait after ``failures`` failures in a row: initial, doubling, capped, plus up to 20 % jitter."""
    if failures <= 0:
        return 0.0
    base = min(cap, initial * 2 ** min(failures - 1, 30))
    return base * (1.0 + JITTER * rand)


def prepare(rows: list[Row]) -> list[Prepared]:
    """Each row with its message content (None when routing excludes it); an event's copies share one."""
    #: event id -> (its destinations, its content once rendered): an event's rows route and render once
    events: dict[int, tuple[list[str], tuple[dict[str, str], bytes] | None]] = {}
    out: list[Prepared] = []
    for row in rows:
        targets, content = events.get(row.event.event_id) or (row.targets(), None)
        if row.destination not in targets:
            events[row.event.event_id] = (targets, content)
            out.append((row, None))
            continue
        if content is None:
            content = (document.headers(row.event), document.render(row.event))
        events[row.event.event_id] = (targets, content)
        out.append((row, content))
    return out


__all__ = ["JITTER", "Prepared", "backoff_delay", "prepare"]
