"""The relay's reads and writes of the outbox: unsent rows in id order with their events; marks; counts.

``outbox.sent_at`` is the relay's own column (the engine's writer only inserts rows), so marking rows sent
is a short transaction of the relay's, one UPDATE per window, under the database's busy timeout.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from broker.events.document import EventDocument
from broker.events.routing import destinations
from broker.events.types import EventLevel, EventType
from broker.persistence.models import Event, Outbox, User, Workflow

OUTBOX, EVENTS, WORKFLOWS, USERS = Outbox.__table__, Event.__table__, Workflow.__table__, User.__table__
#: ids per UPDATE ... WHERE id IN (...) (well below every database's bound-parameter limit)
MARK_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Row:
    """One unsent outbox row with its event."""

    outbox_id: int
    destination: str
    event: EventDocument
    #: the workflow's eventLevel and publishMetadataTo (None for service-level events)
    workflow_level: int | None
    metadata_to: str | None

    def targets(self) -> list[str]:
        """Where routing (levels, publishMetadataTo) sends this row's event: the same for each of its rows."""
        owner = self.event.user if self.event.workflow_id is not None else None
        return destinations(owner=owner, workflow_level=self.workflow_level, metadata_to=self.metadata_to,
                            event_type=self.event.type, level=self.event.level)

    def allowed(self) -> bool:
        """Whether routing sends this event to this row's destination at all."""
        return self.destination in self.targets()


# the partial index ix_outbox_unsent (id WHERE sent_at IS NULL) serves both the filter and the order
_UNSENT = (
    select(OUTBOX.c.id, OUTBOX.c.destination, EVENTS.c.id.label("event_id"), EVENTS.c.seq, EVENTS.c.node_path,
           EVENTS.c.actor, EVENTS.c.level, EVENTS.c.type, EVENTS.c.state, EVENTS.c.message, EVENTS.c.time,
           EVENTS.c.properties, WORKFLOWS.c.global_id, WORKFLOWS.c.event_level, WORKFLOWS.c.publish_metadata_to,
           USERS.c.name.label("user"))
    .select_from(OUTBOX.join(EVENTS, EVENTS.c.id == OUTBOX.c.event_id)
                 .outerjoin(WORKFLOWS, WORKFLOWS.c.id == EVENTS.c.workflow_id)
                 .outerjoin(USERS, USERS.c.id == WORKFLOWS.c.owner_id))
    .where(OUTBOX.c.sent_at.is_(None))
    .order_by(OUTBOX.c.id)
)


def read_unsent(session: Session, limit: int, after: int = 0) -> list[Row]:
    """The first ``limit`` unsent outbox rows with an id above ``after``, in id order, with their events."""
    query = _UNSENT.where(OUTBOX.c.id > after) if after else _UNSENT
    rows = []
    #: event id -> its document: an event has a row per destination, built once
    events: dict[int, EventDocument] = {}
    for r in session.execute(query.limit(limit)):
        event = events.get(r.event_id)
        if event is None:
            node_id = f"{r.global_id}/{r.node_path}" if r.global_id and r.node_path else None
            event = events[r.event_id] = EventDocument(
                event_id=r.event_id, seq=r.seq, type=EventType(r.type), level=EventLevel(r.level),
                workflow_id=r.global_id, node_id=node_id, user=r.user, actor=r.actor, state=r.state, time=r.time,
                message=r.message, properties=dict(r.properties or {}))
        rows.append(Row(r.id, r.destination, event, r.event_level, r.publish_metadata_to))
    return rows


def mark_sent(sessions: sessionmaker[Session], outbox_ids: Sequence[int], now: dt.datetime) -> None:
    """Mark rows sent, in one short transaction."""
    with sessions.begin() as s:
        for i in range(0, len(outbox_ids), MARK_CHUNK):
            s.execute(update(OUTBOX).where(OUTBOX.c.id.in_(outbox_ids[i:i + MARK_CHUNK])).values(sent_at=now))


def count_unsent(session: Session) -> int:
    """How many outbox rows wait to be published."""
    return session.execute(select(func.count()).select_from(OUTBOX).where(OUTBOX.c.sent_at.is_(None))).scalar_one()
