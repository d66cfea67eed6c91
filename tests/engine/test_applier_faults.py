"""The request applier's loop when the database cannot be read: one line a round, the loop goes on."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from sqlalchemy import create_engine

from broker.applier import Applier
from broker.config import Settings
from broker.persistence.db import session_factory
from tests.fixtures import wait_for


def test_an_unreadable_database_is_one_warning_line_a_round_and_the_loop_goes_on(tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    # a real SQLite that cannot open its file: the OperationalError a cut or unreachable server also raises
    db = create_engine(f"sqlite:///{blocker / 'broker.db'}")
    settings = Settings().replace("engine", control_interval=0.05)
    applier = Applier(SimpleNamespace(settings=settings, sessions=session_factory(db)), "test holder")
    caplog.set_level(logging.DEBUG, logger="broker.applier")
    applier.start()
    try:
        wait_for(lambda: sum(r.levelno == logging.WARNING for r in caplog.records) >= 2, deadline=10,
                 what="two rounds of the applier to fail")
    finally:
        applier._stop_event.set()
        applier.join(timeout=10)
        db.dispose()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)
    assert "database unavailable: unable to open database file" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    # the detail stays behind the debug level
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
