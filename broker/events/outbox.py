"""The relay's reads and writes of the outbox: unsent rows in id order with their events; marks; counts.

``outbox.sent_at`` is the relay's own column (the engine's writer only inserts rows), so marking rows sent
is a short transaction of the relay's, one UPDATE per window, under the database's busy timeout. Both run
on the driver directly (:class:`OutboxSQL`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, bindparam, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from broker.events.document import EventDocument
from broker.events.routing import destinations
from broker.events.types import EventLevel, EventType
from broker.persistence.models import Event, Outbox, User, Workflow
from broker.persistence.rawsql import time_for_driver

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
    .where(OUTBOX.c.sent_at.is_(None), OUTBOX.c.id > bindparam("after", type_=Integer))
    .order_by(OUTBOX.c.id)
    .limit(bindparam("window", type_=Integer))
)


class OutboxSQL:
    """The relay's read of a window and its mark, sent straight to the database driver.

    The relay runs them once or twice per window, every few milliseconds while workflows run; through a
    Session each costs about a millisecond of Python (a session, a pooled connection's checkout, the
    statement's cache key) where the SQL itself takes a tenth of that, and it was a third of the relay's
    CPU. So the read is compiled once for the database's dialect (from the one definition above), runs on
    a pooled driver connection, and its values are converted as the column types would convert them
    (tests/events/test_outbox.py compares both on SQLite and PostgreSQL). Driver errors come out as
    SQLAlchemy's DBAPIError, like those of the Session they replace.
    """

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions
        with sessions() as s:
            self.engine = s.get_bind()
        dialect = self.engine.dialect
        self.sqlite = dialect.name == "sqlite"
        compiled = _UNSENT.compile(dialect=dialect)
        self._select = str(compiled)
        #: every parameter with its value as compiled (SQLite's LIMIT also takes an OFFSET of 0)
        self._params = dict(compiled.params)
        #: the parameter names in order for a positional paramstyle (SQLite's ?), else None (a dict)
        self._order = compiled.positiontup if dialect.positional else None
        self._mark = "?" if dialect.paramstyle == "qmark" else "%s"
        self._errors = dialect.loaded_dbapi.Error

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[tuple[Any, Any]]:
        connection = self.engine.raw_connection()  # the pool's checkout: pre-ping, the SQLite pragmas
        try:
            cursor = connection.cursor()
            try:
                yield connection, cursor
            finally:
                cursor.close()
        except self._errors as exc:
            raise DBAPIError.instance(None, None, exc, self._errors) from exc
        finally:
            connection.close()  # back to the pool, which rolls back whatever was left open

    def read_unsent(self, limit: int, after: int = 0) -> list[Row]:
        """The first ``limit`` unsent outbox rows with an id above ``after``, in id order, with their events."""
        params: Any = {**self._params, "after": after, "window": limit}
        if self._order is not None:
            params = tuple(params[name] for name in self._order)
        with self._cursor() as (_, cursor):
            cursor.execute(self._select, params)
            found = cursor.fetchall()
        rows = []
        #: event id -> its document: an event has a row per destination, built once
        events: dict[int, EventDocument] = {}
        for (outbox_id, destination, event_id, seq, node_path, actor, level, kind, state, message, time,
             properties, global_id, event_level, metadata_to, user) in found:
            event = events.get(event_id)
            if event is None:
                node_id = f"{global_id}/{node_path}" if global_id and node_path else None
                event = events[event_id] = EventDocument(
                    event_id=event_id, seq=seq, type=EventType(kind), level=EventLevel(level),
                    workflow_id=global_id, node_id=node_id, user=user, actor=actor, state=state,
                    time=self._time(time), message=message, properties=dict(self._json(properties) or {}))
            rows.append(Row(outbox_id, destination, event, event_level, metadata_to))
        return rows

    def mark(self, outbox_ids: Sequence[int], now: dt.datetime) -> None:
        """Mark rows sent, in one short transaction."""
        sent_at = time_for_driver(now, self.sqlite)
        with self._cursor() as (connection, cursor):
            for i in range(0, len(outbox_ids), MARK_CHUNK):
                chunk = list(outbox_ids[i:i + MARK_CHUNK])
                marks = ", ".join([self._mark] * len(chunk))
                cursor.execute(f"UPDATE outbox SET sent_at = {self._mark} WHERE id IN ({marks})", [sent_at, *chunk])
            connection.commit()

    def _time(self, value: Any) -> dt.datetime:
        if isinstance(value, str):  # SQLite: naive UTC text
            return dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc)
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)

    @staticmethod
    def _json(value: Any) -> Any:
        # SQLite returns the JSON text, psycopg the decoded value
        return json.loads(value) if isinstance(value, (str, bytes)) else value


def mark_sent(outbox: OutboxSQL, outbox_ids: Sequence[int], now: dt.datetime) -> None:
    """Mark rows sent, in one short transaction (a function of its own: tests intercept it)."""
    outbox.mark(outbox_ids, now)


def count_unsent(session: Session) -> int:
    """How many outbox rows wait to be published."""
    return session.execute(select(func.count()).select_from(OUTBOX).where(OUTBOX.c.sent_at.is_(None))).scalar_one()
