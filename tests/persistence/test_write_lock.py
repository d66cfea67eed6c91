"""SQLite's one write lock, shared in-process by the writer and the relay (broker.persistence.db.write_lock).

Without it they found the database locked in turn and SQLite's busy handler put them to sleep for 1, 2, 5...
ms each time; with it they queue on a mutex. Here the busy timeout is 0, so any collision is an error at once
instead of a sleep: the tests fail if either side stops taking the lock. And the relay's mark commits without
its fsync, the connection's own level restored for whoever takes it from the pool next.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from broker.config import DatabaseSettings
from broker.events.outbox import OutboxSQL
from broker.persistence.changes import Note
from broker.persistence.db import make_engine, session_factory
from broker.persistence.models import Outbox
from broker.persistence.store import Store
from tests.events.test_relay import add_events, submit

ROUNDS = 150


@pytest.fixture
def impatient(sqlite_template: Path, tmp_path: Path) -> Any:
    """A migrated SQLite file whose connections give up at once on a locked database."""
    path = tmp_path / "broker.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}", DatabaseSettings(busy_timeout=0))
    yield engine
    engine.dispose()


def test_the_writers_commits_and_the_relays_marks_never_find_the_database_locked(impatient, caplog):
    sessions = session_factory(impatient)
    wf = submit(sessions)
    add_events(sessions, wf, ROUNDS)
    with sessions() as s:
        ids = list(s.scalars(select(Outbox.id).order_by(Outbox.id)))
    store, outbox = Store(sessions), OutboxSQL(sessions)
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def marks() -> None:
        start.wait()
        try:
            for i in range(ROUNDS):
                outbox.mark(ids[i:i + 1], dt.datetime.now(dt.timezone.utc))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    marker = threading.Thread(target=marks)
    marker.start()
    start.wait()
    with caplog.at_level(logging.DEBUG, logger="broker.persistence.store"):
        for i in range(ROUNDS):
            store.commit([Note(workflow_id=wf.id, type="NODE_LAUNCH", actor="test", message=f"note {i}")])
    marker.join()
    assert failures == []
    # the store retries a locked database after a pause: that it never had to is what the lock is for
    assert [r.message for r in caplog.records if "database unavailable" in r.message] == []
    with sessions() as s:
        assert s.scalar(select(Outbox.sent_at).where(Outbox.id == ids[ROUNDS - 1])) is not None


def test_a_mark_commits_without_its_fsync_and_gives_the_connection_back_at_its_own_level(impatient):
    sessions = session_factory(impatient)
    wf = submit(sessions)
    add_events(sessions, wf, 2)
    with sessions() as s:
        ids = list(s.scalars(select(Outbox.id)))
    impatient.dispose()  # new connections, traced from the start
    statements: list[str] = []

    @event.listens_for(impatient, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    OutboxSQL(sessions).mark(ids, dt.datetime.now(dt.timezone.utc))
    update = next(i for i, s in enumerate(statements) if s.startswith("UPDATE outbox"))
    commit = next(i for i, s in enumerate(statements) if i > update and s == "COMMIT")
    assert "PRAGMA synchronous=NORMAL" in statements[:update]
    assert statements[commit + 1:] == ["PRAGMA synchronous=2"]  # FULL, the default, as it was
    with impatient.connect() as connection:  # the same pooled connection, as the writer would take it
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
