"""Engines, start-up revision checks and the UTCDateTime column type."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError

from broker.config import DatabaseSettings, Settings
from broker.configload import load_settings
from broker.errors import ConfigError, DatabaseError
from broker.persistence import migrate
from broker.persistence.db import current_revision, make_engine, normalise_url, session_factory
from broker.persistence.models import User
from broker.persistence.opening import open_database
from broker.persistence.schema_version import HEAD_REVISION

REPO = Path(__file__).resolve().parents[2]


def settings_for(url: str) -> Settings:
    return Settings().replace("database", url=url)


def pragmas(engine, *names: str) -> dict[str, object]:
    with engine.connect() as conn:
        return {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in names}


def test_sqlite_connections_use_wal_foreign_keys_and_the_configured_timeout_and_synchronous(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}",
                         DatabaseSettings(busy_timeout=2.5, sqlite_synchronous="normal"))
    try:
        assert pragmas(engine, "journal_mode", "foreign_keys", "busy_timeout", "synchronous") == {
            "journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 2500, "synchronous": 1}
    finally:
        engine.dispose()


def test_sqlite_synchronous_defaults_to_full_for_durable_commits(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}", Settings())
    try:
        assert pragmas(engine, "synchronous") == {"synchronous": 2}
    finally:
        engine.dispose()


def test_an_invalid_synchronous_level_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="sqlite_synchronous"):
        make_engine(f"sqlite:///{tmp_path / 'b.db'}", DatabaseSettings(sqlite_synchronous="sometimes"))


def test_synchronous_can_be_set_from_the_environment():
    settings = load_settings(environ={"BROKER_DATABASE_SQLITE_SYNCHRONOUS": "normal"})
    assert settings.database.sqlite_synchronous == "normal"


def test_the_directory_of_a_sqlite_file_is_created(tmp_path):
    path = tmp_path / "deep" / "er" / "broker.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert path.exists()
    finally:
        engine.dispose()


def test_an_in_memory_database_is_shared_by_every_session():
    engine = make_engine("sqlite://")
    try:
        migrate.upgrade(engine)
        sessions = session_factory(engine)
        with sessions.begin() as s:
            s.add(User(name="alice"))
        with sessions() as s:
            assert s.query(User).one().name == "alice"
    finally:
        engine.dispose()


def test_postgresql_urls_without_a_driver_use_psycopg_3():
    assert normalise_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    engine = make_engine("postgresql://u@127.0.0.1:1/d")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


@pytest.mark.parametrize("url", ["mysql://u@h/d", "not a url"])
def test_other_databases_and_malformed_urls_are_config_errors(url):
    with pytest.raises(ConfigError):
        make_engine(url)


def test_an_unreachable_server_is_a_database_error_naming_it():
    engine = make_engine("postgresql://nobody:secret@127.0.0.1:1/nothing")
    with pytest.raises(DatabaseError, match="127.0.0.1:1/nothing") as caught:
        current_revision(engine)
    assert "secret" not in str(caught.value)


def test_a_new_sqlite_file_is_created_and_migrated_on_first_open(tmp_path):
    path = tmp_path / "state" / "broker.db"
    engine = open_database(settings_for(f"sqlite:///{path}"), auto_migrate=True)
    try:
        assert path.exists()
        assert current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()
    # the second open finds it at the head and just opens it
    open_database(settings_for(f"sqlite:///{path}"), auto_migrate=False).dispose()


@pytest.mark.slow
def test_an_empty_database_is_refused_without_auto_migrate(db_url):
    with pytest.raises(DatabaseError, match=rf"revision none .*expected {HEAD_REVISION}: run `broker db upgrade`"):
        open_database(settings_for(db_url), auto_migrate=False)


def test_a_database_at_the_head_opens(migrated_url):
    engine = open_database(settings_for(migrated_url), auto_migrate=False)
    try:
        assert current_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_not_at_the_head_is_refused_with_the_upgrade_command(postgres_server, request):
    from tests.fixtures import require

    require(postgres_server is not None, "PostgreSQL")
    name = postgres_server.create_database()
    request.addfinalizer(lambda: postgres_server.drop_database(name))
    url = postgres_server.url(name)
    migrate.upgrade(url)
    migrate.downgrade(url, "base")  # the oldest revision there is: none
    with pytest.raises(DatabaseError) as caught:
        open_database(settings_for(url), auto_migrate=True)
    assert f"at revision none (empty database), expected {HEAD_REVISION}: run `broker db upgrade`" in str(caught.value)
    assert migrate.current(url) is None, "PostgreSQL must never be migrated implicitly"


def test_a_revision_from_a_newer_broker_is_refused_even_with_auto_migrate(migrated_url):
    engine = make_engine(migrated_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(DatabaseError, match="9999, which this broker does not know"):
        open_database(settings_for(migrated_url), auto_migrate=True)


@pytest.mark.slow
def test_opening_a_database_at_the_head_does_not_import_alembic(migrated_url):
    # start-up must stay fast: alembic is for upgrades only
    script = ("import sys\n"
              "from broker.configload import load_settings\n"
              "from broker.persistence.opening import open_database\n"
              "open_database(load_settings(), auto_migrate=True).dispose()\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n")
    env = {**os.environ, "BROKER_DATABASE_URL": migrated_url}
    env.pop("BROKER_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_utc_datetimes_come_back_aware_and_in_utc(sessions):
    local = dt.datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with sessions.begin() as s:
        s.add(User(name="alice", created_at=local))
    with sessions() as s:
        stored = s.query(User).one().created_at
    assert stored.tzinfo is not None and stored.utcoffset() == dt.timedelta(0)
    assert stored == local
    assert stored.hour == 23 and stored.day == 28


def test_a_naive_datetime_is_refused(sessions):
    with pytest.raises(StatementError, match="naive datetime"):
        with sessions.begin() as s:
            s.add(User(name="bob", created_at=dt.datetime(2026, 1, 1)))


def test_the_writers_connection_is_not_pinged_and_a_commit_after_a_cut_is_retried_on_a_new_one(engine, monkeypatch):
    from broker.persistence.changes import Note
    from broker.persistence.db import writer_engine
    from broker.persistence.store import Store

    writer = writer_engine(engine)
    if engine.dialect.name == "sqlite":
        assert writer is engine  # in process: nothing to ping, one pool
        return
    with engine.connect():
        pass  # pooled: pinged when it is handed out again (a new connection is not)
    pings = []
    original = type(engine.dialect).do_ping
    monkeypatch.setattr(type(engine.dialect), "do_ping", lambda self, c: pings.append(1) or original(self, c))
    try:
        store = Store(session_factory(writer))
        store.commit([Note(None, "ADMIN_ACTION", "admin:root", message="one")])
        store.commit([Note(None, "ADMIN_ACTION", "admin:root", message="two")])
        assert pings == []
        with engine.connect() as conn:  # a reader: pinged as the pool hands it out
            assert pings == [1]
            ended = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                      "datname = current_database() AND pid <> pg_backend_pid()")).scalar()
        assert ended >= 1  # the writer's connection, cut as by a server restart
        store.commit([Note(None, "ADMIN_ACTION", "admin:root", message="three")])  # retried on a new one
        with engine.connect() as conn:
            assert conn.execute(text("SELECT message FROM events ORDER BY id")).scalars().all() == [
                "one", "two", "three"]
    finally:
        writer.dispose()
