"""What one round of the outbox relay sends, how long it waits after failures, what a refusal means.

Kept apart from the relay actor (:mod:`broker.events.relay`) so that they read and test on their own.
"""

from __future__ import annotations

import logging

from broker.events import document
from broker.events.outbox import OutboxSQL, Row
from broker.events.routing import ALL_EVENTS_TOPIC, user_topic

#: the relay's logger: these are its messages
log = logging.getLogger("broker.events.relay")

#: fraction of a backoff delay added at random, so many brokers do not reconnect in step
JITTER = 0.2
#: an event's message headers and body, rendered once per event
Content = tuple[dict[str, str], bytes]
#: one row ready to send: the row, and its event's content (None: routing excludes this destination)
Prepared = tuple[Row, Content | None]


def backoff_delay(failures: int, initial: float, cap: float, rand: float = 0.0) -> float:
    """Seconds to wait after ``failures`` failures in a row: initial, doubling, capped, plus up to 20 % jitter."""
    if failures <= 0:
        return 0.0
    base = min(cap, initial * 2 ** min(failures - 1, 30))
    return base * (1.0 + JITTER * rand)


def prepare(rows: list[Row]) -> list[Prepared]:
    """Each row with its message content (None when routing excludes it); an event's copies share one."""
    #: event id -> (its destinations, its content once rendered): an event's rows route and render once
    events: dict[int, tuple[list[str], Content | None]] = {}
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


def read_window(outbox: OutboxSQL, window: int, after: int = 0) -> list[Prepared]:
    """Read and prepare up to ``window`` unsent rows with an id above ``after``; raises SQLAlchemyError."""
    return prepare(outbox.read_unsent(window, after=after))


def refused(refusals: dict[int, int], row: Row, reason: str, limit: int) -> bool:
    """Count a refusal of ``row`` by the bus in ``refusals`` (outbox id -> refusals so far); True when the
    event is to be skipped for good (then forgotten there).

    Only a workflow's own publishMetadataTo destination may be skipped (after ``limit``, [events]
    max_rejections, refusals; 0: never): a user chose it, and it must not hold back everyone's events. A
    refusal on the broker's own topics is the bus account's misconfiguration: those events wait until the bus
    allows them.
    """
    count = refusals.get(row.outbox_id, 0) + 1
    refusals[row.outbox_id] = count
    own = row.destination == ALL_EVENTS_TOPIC or (row.event.user is not None
                                                  and row.destination == user_topic(row.event.user))
    if own:
        log.error("the bus refused event %s for %s (%s): the relay's bus account must be allowed to write the "
                  "broker's topics; events wait in the outbox until it is (refusal %d)", row.event.event_id,
                  row.destination, reason, count)
        return False
    if limit and count >= limit:
        log.error("event %s (workflow %s, %s) was refused %d times by the bus for its publishMetadataTo "
                  "destination %s (%s): skipped, it is NOT published there", row.event.event_id,
                  row.event.workflow_id, row.event.type, count, row.destination, reason)
        refusals.pop(row.outbox_id, None)
        return True
    log.warning("the bus refused event %s for %s (%s); refusal %d%s", row.event.event_id, row.destination,
                reason, count, f" of {limit}" if limit else "")
    return False


__all__ = ["Content", "JITTER", "Prepared", "backoff_delay", "prepare", "read_window", "refused"]
