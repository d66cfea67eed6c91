"""Migrations and ``broker db``: on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, insert, select

from broker.cli import main
from broker.errors import DatabaseError
from broker.persistence import migrate
from broker.persistence.db import make_engine
from broker.persistence.models import Base, Dependency, Node, User, Workflow, utcnow
from broker.persistence.schema_version import HEAD_REVISION, REVISIONS

TABLES = {"users", "accounts", "workflows", "nodes", "dependencies", "events", "outbox", "control", "elf_sessions",
          "broker_lease", "stored_workflows", "attempts", "requests", "writer_info"}


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def test_head_constants_equal_what_alembic_reads_from_the_scripts():
    assert HEAD_REVISION == migrate.head()
    assert list(REVISIONS) == migrate.revisions()


def test_revision_files_are_named_by_revision_and_slug():
    files = sorted(p.name for p in (migrate.migrations_dir() / "versions").glob("*.py"))
    assert files, "no revision files found"
    for name in files:
        assert re.fullmatch(r"\d{4}_[a-z0-9_]+\.py", name), name
    assert [name[:4] for name in files] == list(REVISIONS)


def test_the_migrations_create_every_table_of_the_models():
    assert set(Base.metadata.tables) == TABLES


def test_where_the_schema_is_compared_the_partial_indexes_have_their_postgresql_form():
    # declared for SQLite only in the models (the PostgreSQL dialect is not loaded by a run on SQLite);
    # importing broker.persistence.migrate completes them, so that `check` compares the whole schema
    from broker.persistence.models import PARTIAL_INDEXES

    assert {index.name for index, _ in PARTIAL_INDEXES} == {"ix_outbox_unsent", "ix_control_pending",
                                                            "ix_requests_pending"}
    for index, where in PARTIAL_INDEXES:
        assert str(index.dialect_kwargs["postgresql_where"]) == str(index.dialect_kwargs["sqlite_where"]) == where


@pytest.mark.slow
def test_upgrade_check_downgrade_and_upgrade_again(db_url):
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == HEAD_REVISION
    assert tables(db_url) >= TABLES
    assert migrate.check(db_url) == []

    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None
    assert tables(db_url) - {"alembic_version", "sqlite_sequence"} == set()

    migrate.upgrade(db_url)
    assert migrate.current(db_url) == HEAD_REVISION
    assert migrate.check(db_url) == []


def test_check_reports_a_database_that_is_not_migrated(db_url):
    differences = migrate.check(db_url)
    assert len(differences) == 1
    assert f"expected {HEAD_REVISION}" in differences[0]


def test_cli_check_prints_no_drift_and_exits_0_on_a_migrated_database(migrated_url, capsys):
    assert main(["db", "check", "--db", migrated_url]) == 0
    assert "no drift" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_check_exits_1_and_names_a_column_added_to_the_models(migrated_url):
    # a separate interpreter, so the real models stay unchanged for every other test
    script = textwrap.dedent(f"""
        import sys
        from sqlalchemy import Column, String
        from broker.persistence.models import Base
        Base.metadata.tables["nodes"].append_column(Column("surprise_column", String(10)))
        from broker.cli import main
        sys.exit(main(["db", "check", "--db", {migrated_url!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1, done.stderr
    assert "nodes.surprise_column" in done.stdout
    assert "no drift" not in done.stdout


def test_cli_current_prints_the_head(migrated_url, capsys):
    assert main(["db", "current", "--db", migrated_url]) == 0
    assert capsys.readouterr().out.strip() == f"{HEAD_REVISION} (head)"


@pytest.mark.slow
def test_cli_upgrade_and_downgrade_move_the_revision(db_url, capsys):
    assert main(["db", "current", "--db", db_url]) == 0
    assert capsys.readouterr().out.startswith("none")
    assert main(["db", "upgrade", "--db", db_url]) == 0
    assert f"revision {HEAD_REVISION}" in capsys.readouterr().out
    assert migrate.current(db_url) == HEAD_REVISION
    assert main(["db", "downgrade", "base", "--db", db_url]) == 0
    assert migrate.current(db_url) is None


def test_cli_refuses_an_unknown_revision_as_a_usage_error(db_url, capsys):
    assert main(["db", "upgrade", "no-such-revision", "--db", db_url]) == 2
    assert "no-such-revision" in capsys.readouterr().err


def test_cli_takes_the_database_from_the_config_file(tmp_path, capsys):
    database = tmp_path / "from-config.db"
    config = tmp_path / "broker.ini"
    config.write_text(f"[database]\nurl = sqlite:///{database}\n")
    assert main(["db", "upgrade", "--config", str(config)]) == 0
    assert migrate.current(f"sqlite:///{database}") == HEAD_REVISION


def test_sqlite_migration_rebuilding_a_table_keeps_the_rows_that_refer_to_it(sqlite_template, tmp_path):
    # table rebuilds (alembic's batch mode) are a SQLite matter
    shutil.copyfile(sqlite_template, tmp_path / "broker.db")
    engine = make_engine(f"sqlite:///{tmp_path / 'broker.db'}")
    try:
        with engine.begin() as conn:
            user_id = conn.execute(insert(User.__table__).returning(User.id),
                                   {"name": "alice", "role": "user", "created_at": utcnow()}).scalar_one()
            wf_id = conn.execute(insert(Workflow.__table__).returning(Workflow.id), {
                "global_id": "wf-0000000000aaaaaaaa", "owner_id": user_id, "name": "w", "descriptor": "",
                "descriptor_sha256": "", "plan": "{}", "event_level": 1, "priority": 0, "state": "accepted",
                "cancel_requested": False, "event_seq": 0, "submitted_at": utcnow()}).scalar_one()
            ids = conn.execute(insert(Node.__table__).returning(Node.id), [
                {"workflow_id": wf_id, "path": p, "template": p, "kind": "node", "state": "ready", "priority": 0,
                 "attempt": 0, "created_at": utcnow()} for p in ("a", "b")]).scalars().all()
            conn.execute(insert(Dependency.__table__), {"parent_id": ids[0], "child_id": ids[1]})
        # what a later revision's batch_alter_table does on SQLite: copy, drop and rename the table
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext

        with migrate._migration_connection(engine) as conn:
            ops = Operations(MigrationContext.configure(conn))
            with ops.batch_alter_table("nodes", recreate="always"):
                pass
        with engine.connect() as conn:
            assert conn.execute(select(Dependency.parent_id, Dependency.child_id)).all() == [(ids[0], ids[1])]
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_a_new_revision_is_numbered_after_the_head(tmp_path):
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    path = migrate.revision("add nothing", script_location=scripts)
    assert path.name == f"{int(HEAD_REVISION) + 1:04d}_add_nothing.py"
    text = path.read_text()
    assert f"down_revision = {HEAD_REVISION!r}" in text
    assert "broker.persistence.models" not in text


def test_a_failed_migration_changes_nothing(db_url, tmp_path):
    scripts = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    broken = f"{int(HEAD_REVISION) + 1:04d}"
    (scripts / "versions" / f"{broken}_broken.py").write_text(textwrap.dedent(f"""
        from alembic import op
        revision = {broken!r}
        down_revision = {HEAD_REVISION!r}
        def upgrade():
            op.execute("SELECT * FROM no_such_table")
    """))
    with pytest.raises(DatabaseError, match="no_such_table"):
        with migrate._migration_connection(db_url) as conn:
            command.upgrade(migrate.alembic_config(conn, script_location=scripts), "head")
    assert migrate.current(db_url) is None
    assert tables(db_url) - {"sqlite_sequence"} == set()
