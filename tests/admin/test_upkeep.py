"""PostgreSQL upkeep: a delete vacuums the tables it touched (after its commit); a broker warns at start when
autovacuum will not clean its tables. On a real PostgreSQL (SQLite needs neither)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text

from broker.persistence.upkeep import autovacuum_problem, deleted_tables
from tests.admin.helpers import example, run_workflows
from tests.engine.helpers import Broker

pytestmark = pytest.mark.slow


def last_vacuums(engine) -> dict[str, object]:
    with engine.connect() as c:
        rows = c.execute(text("SELECT relname, last_vacuum, last_analyze FROM pg_stat_user_tables "
                              "WHERE relname = ANY(:names)").bindparams(names=list(deleted_tables()))).all()
    return {name: (vacuumed, analyzed) for name, vacuumed, analyzed in rows}


def test_the_tables_a_delete_touches_are_those_cascading_from_workflows():
    tables = deleted_tables()
    assert tables[0] == "workflows"
    assert {"nodes", "dependencies", "events", "outbox", "elf_sessions"} <= set(tables)
    assert not {"users", "accounts", "broker_lease"} & set(tables)


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_a_delete_vacuums_and_analyzes_every_table_it_touched_after_its_commit(admin_cli):
    run_workflows(admin_cli.url, admin_cli.tmp, {"a": (example("hello.xml"), "alice"),
                                                 "b": (example("failing.xml"), "bob")})
    engine = admin_cli.sessions.kw["bind"]
    assert all(vacuumed is None for vacuumed, _ in last_vacuums(engine).values())
    done = admin_cli("admin", "delete", "--completed", "--yes")
    assert done.returncode == 0, done.stderr
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM workflows")).scalar_one() == 0
    after = last_vacuums(engine)
    assert set(after) == set(deleted_tables())
    assert all(vacuumed is not None and analyzed is not None for vacuumed, analyzed in after.values()), after


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_nothing_deleted_means_no_vacuum(admin_cli):
    engine = admin_cli.sessions.kw["bind"]
    done = admin_cli("admin", "delete", "--completed", "--yes")
    assert done.returncode == 0, done.stderr
    assert all(vacuumed is None for vacuumed, _ in last_vacuums(engine).values())


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_a_broker_warns_at_start_when_autovacuum_is_off_for_its_tables(migrated_url, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="broker.persistence.upkeep")
    from broker.persistence.db import make_engine

    Broker(migrated_url, tmp_path).start().stop()
    engine = make_engine(migrated_url)
    try:
        assert autovacuum_problem(engine) is None
        assert not [r for r in caplog.records if "autovacuum" in r.getMessage()]
        with engine.begin() as c:
            c.execute(text("ALTER TABLE events SET (autovacuum_enabled = false)"))
            c.execute(text("ALTER TABLE outbox SET (autovacuum_enabled = false)"))
    finally:
        engine.dispose()
    Broker(migrated_url, tmp_path).start().stop()
    warnings = [r.getMessage() for r in caplog.records if "autovacuum" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("autovacuum is off for table(s) events, outbox: ")


def test_sqlite_has_no_autovacuum_problem(sqlite_admin_cli):
    assert autovacuum_problem(sqlite_admin_cli.sessions.kw["bind"]) is None
