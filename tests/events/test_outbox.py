"""The relay's driver-level read and mark of the outbox (broker.events.outbox.OutboxSQL), on SQLite and PostgreSQL.

They bypass SQLAlchemy's column types, so these tests compare what they read with what the ORM reads from
the same rows, and read the marks they write back through the ORM.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from broker.events.outbox import OutboxSQL, count_unsent, mark_sent
from broker.events.types import EventType
from broker.persistence import repository
from broker.persistence.db import make_engine, session_factory
from broker.persistence.models import Event, Outbox, User, Workflow
from tests.events.test_relay import add_events, submit

HOSTILE = {"text": "a <b> & 'c' \"d\" \r\n\u00e9\U0001F600", "nested": {"list": [1, 2.5, None, True]}, "n": 7}


def expected_rows(sessions: Any) -> list[tuple[Any, ...]]:
    """Every unsent row as the ORM reads it: (outbox id, destination, event fields..., workflow fields...)."""
    with sessions() as s:
        out = []
        for box in s.execute(select(Outbox).where(Outbox.sent_at.is_(None)).order_by(Outbox.id)).scalars():
            event = s.get(Event, box.event_id)
            wf = s.get(Workflow, event.workflow_id) if event.workflow_id is not None else None
            user = s.get(User, wf.owner_id).name if wf is not None else None
            out.append((box.id, box.destination, event.id, event.seq, event.node_path, event.actor, event.level,
                        event.type, event.state, event.message, event.time, dict(event.properties or {}),
                        wf.global_id if wf else None, wf.event_level if wf else None,
                        wf.publish_metadata_to if wf else None, user))
        return out


def read_rows(outbox: OutboxSQL, limit: int = 1000, after: int = 0) -> list[tuple[Any, ...]]:
    out = []
    for row in outbox.read_unsent(limit, after=after):
        e = row.event
        node_path = e.node_id.split("/", 1)[1] if e.node_id else None
        out.append((row.outbox_id, row.destination, e.event_id, e.seq, node_path, e.actor, int(e.level),
                    e.type.value, e.state, e.message, e.time, e.properties, e.workflow_id, row.workflow_level,
                    row.metadata_to, e.user))
    return out


def test_the_drivers_read_gives_what_the_orm_reads_of_the_same_rows(sessions):
    wf = submit(sessions, owner="alice-2")
    add_events(sessions, wf, 3, properties=HOSTILE)
    add_events(sessions, wf, 2, event_type=EventType.NODE_PROGRESS, properties={"percent": 50})
    with sessions.begin() as s:  # a service-level event: no workflow, no owner
        repository.add_event(s, None, type=EventType.SERVICE, actor="broker", message="started <&> \u2028 here")
    expected = expected_rows(sessions)
    assert len(expected) >= 8 and any(r[12] is None for r in expected)
    got = read_rows(OutboxSQL(sessions))
    assert got == expected
    # aware UTC datetimes, as the ORM's UTCDateTime gives them
    assert all(r[10].tzinfo is not None and r[10].utcoffset() == dt.timedelta(0) for r in got)


def test_a_window_starts_after_the_given_id_and_holds_at_most_the_limit(sessions):
    wf = submit(sessions)
    add_events(sessions, wf, 10)
    outbox = OutboxSQL(sessions)
    ids = [r[0] for r in expected_rows(sessions)]
    assert [r.outbox_id for r in outbox.read_unsent(4)] == ids[:4]
    assert [r.outbox_id for r in outbox.read_unsent(3, after=ids[5])] == ids[6:9]
    assert outbox.read_unsent(5, after=ids[-1]) == []


def test_marked_rows_read_back_through_the_orm_with_their_time_and_leave_the_window(sessions):
    wf = submit(sessions)
    add_events(sessions, wf, 4)
    outbox = OutboxSQL(sessions)
    ids = [r[0] for r in expected_rows(sessions)]
    now = dt.datetime(2026, 12, 7, 3, 4, 5, 678901, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    mark_sent(outbox, ids[:3], now)
    with sessions() as s:
        sent = dict(s.execute(select(Outbox.id, Outbox.sent_at)).all())
        assert count_unsent(s) == len(ids) - 3
    assert [sent[i] for i in ids[:3]] == [now] * 3  # the same instant (stored as UTC)
    assert all(sent[i] is None for i in ids[3:])
    assert [r.outbox_id for r in outbox.read_unsent(100)] == ids[3:]


def test_more_ids_than_one_statement_takes_are_marked_in_chunks(sessions, monkeypatch):
    from broker.events import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "MARK_CHUNK", 3)
    wf = submit(sessions)
    add_events(sessions, wf, 5)
    ids = [r[0] for r in expected_rows(sessions)]
    mark_sent(OutboxSQL(sessions), ids, dt.datetime.now(dt.timezone.utc))
    with sessions() as s:
        assert count_unsent(s) == 0


def test_driver_errors_come_out_as_sqlalchemys_so_the_relay_backs_off(db_url):
    engine = make_engine(db_url)  # never migrated: no outbox table
    try:
        outbox = OutboxSQL(session_factory(engine))
        with pytest.raises(DBAPIError):
            outbox.read_unsent(10)
        with pytest.raises(DBAPIError):
            outbox.mark([1, 2], dt.datetime.now(dt.timezone.utc))
    finally:
        engine.dispose()
