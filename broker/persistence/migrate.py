"""Schema migrations: alembic configured in code (there is no alembic.ini).

The scripts live in the top-level ``migrations/`` directory (found by :func:`migrations_dir`), one file per
revision named ``<rev>_<slug>.py`` with revisions numbered ``0001``, ``0002``, ... Every function takes an
Engine or a URL. Adding a revision: change the models, call :func:`revision` (it autogenerates the
operations against a scratch SQLite database at the head), review the file, then add its id to
``broker.persistence.schema_version.REVISIONS``.

On SQLite a migration runs in one ``BEGIN IMMEDIATE`` transaction with foreign keys off: alembic's batch mode
rebuilds a table by copy, drop and rename, and dropping a table with foreign keys on would cascade-delete
the rows that refer to it. ``PRAGMA foreign_key_check`` must then come back clean, or nothing is committed.
Alembic's ``CommandError`` (e.g. an unknown revision) is raised as it is.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError

from broker.errors import DatabaseError
from broker.persistence import db
from broker.persistence import requestrows  # noqa: F401  (its tables join Base.metadata)
from broker.persistence.models import Base, postgresql_partial_indexes
from broker.persistence.schema_version import HEAD_REVISION

# what migrations and `check` compare with a database is the complete schema, on PostgreSQL too
postgresql_partial_indexes()

#: how revision files are named (``%`` doubled: alembic reads it through ConfigParser interpolation)
FILE_TEMPLATE = "%%(rev)s_%%(slug)s"

Target = Engine | str | URL


def migrations_dir() -> Path:
    """The directory holding ``env.py`` and ``versions/``: the one place that knows where it is.

    Looked up in order: the repository's top-level ``migrations/`` (a checkout or an editable install), then
    ``<prefix>/share/workflow-broker/migrations/`` (where a wheel installs it, as data files).
    """
    candidates = [Path(__file__).resolve().parents[2] / "migrations",
                  Path(sys.prefix) / "share" / "workflow-broker" / "migrations"]
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the migration scripts (env.py) are not in any of: "
                            + ", ".join(str(c) for c in candidates))


def alembic_config(connection: Connection | None = None, *, script_location: Path | None = None) -> Config:
    """An alembic Config for our scripts; ``env.py`` runs on ``connection`` when one is given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or migrations_dir()))
    cfg.set_main_option("file_template", FILE_TEMPLATE)
    cfg.attributes["connection"] = connection
    return cfg


@contextmanager
def _engine(target: Target) -> Iterator[Engine]:
    if isinstance(target, Engine):
        yield target
        return
    engine = db.make_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _migration_connection(target: Target) -> Iterator[Connection]:
    """A connection in a write transaction that also covers the DDL, committed when the block succeeds."""
    with _engine(target) as engine:
        try:
            with engine.connect() as connection:
                if engine.dialect.name == "sqlite":
                    with _sqlite_ddl_transaction(connection):
                        yield connection
                else:
                    with connection.begin():
                        yield connection
        except DBAPIError as exc:
            raise DatabaseError(f"migrating {db.display_url(engine.url)} failed: {db.driver_message(exc)}") from exc


@contextmanager
def _sqlite_ddl_transaction(connection: Connection) -> Iterator[None]:
    raw = connection.connection.driver_connection
    saved = raw.isolation_level
    # take transactions out of the sqlite3 module's hands: it never wraps DDL in a transaction itself
    raw.isolation_level = None
    try:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise DatabaseError(f"migration left {len(broken)} rows with dangling foreign keys, first: "
                                    f"{tuple(broken[0])}; nothing was changed")
            connection.exec_driver_sql("COMMIT")
        except BaseException:
            if raw.in_transaction:  # SQLite rolls back by itself after some errors
                connection.exec_driver_sql("ROLLBACK")
            raise
        finally:
            connection.rollback()  # forget SQLAlchemy's own (empty) transaction
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        raw.isolation_level = saved


def upgrade(target: Target, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (default: the head), creating the tables of an empty one."""
    with _migration_connection(target) as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(target: Target, revision: str) -> None:
    """Migrate the database down to ``revision`` (``base``: drop every table)."""
    with _migration_connection(target) as connection:
        command.downgrade(alembic_config(connection), revision)


def current(target: Target) -> str | None:
    """The database's revision; None for an empty database."""
    with _engine(target) as engine:
        return db.current_revision(engine)


def head() -> str:
    """The head revision according to the scripts in :func:`migrations_dir`."""
    head_revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head_revision is not None, "migrations/versions holds no revision"
    return head_revision


def revisions() -> list[str]:
    """Every revision id in the scripts, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def check(target: Target) -> list[str]:
    """Differences between the models and the migrated database (empty: no drift), like ``alembic check``."""
    with _engine(target) as engine:
        revision = db.current_revision(engine)
        if revision != HEAD_REVISION:
            return [f"database at revision {revision or 'none'}, expected {HEAD_REVISION} "
                    "(run `broker db upgrade` before checking)"]
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(connection, opts=_compare_options(connection))
                diffs = compare_metadata(context, Base.metadata)
        except DBAPIError as exc:
            raise DatabaseError(f"checking {db.display_url(engine.url)} failed: {db.driver_message(exc)}") from exc
    return [describe(d) for d in _flatten(diffs)]


def _compare_options(connection: Connection) -> dict[str, Any]:
    # env.py passes the same options, so `check` sees what a migration would see
    return {"target_metadata": Base.metadata, "compare_type": True,
            "render_as_batch": connection.dialect.name == "sqlite"}


def _flatten(diffs: list[Any]) -> Iterator[tuple[Any, ...]]:
    for diff in diffs:
        # column modifications come grouped in a list per column
        if isinstance(diff, list):
            yield from diff
        else:
            yield diff


def describe(diff: tuple[Any, ...]) -> str:
    """One line for an autogenerate difference, naming the table and column."""
    kind = diff[0]
    if kind in ("add_table", "remove_table"):
        return f"{kind.replace('_', ' ')} {diff[1].name}"
    if kind in ("add_column", "remove_column"):
        _, _, table, column = diff
        where = "in the models, missing from the database" if kind == "add_column" else \
            "in the database, missing from the models"
        return f"column {table}.{column.name} ({column.type}) is {where}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        item = diff[1]
        table = getattr(getattr(item, "table", None), "name", None) or getattr(item, "parent", None)
        what = kind.split("_", 1)[1].replace("fk", "foreign key")
        side = "missing from the database" if kind.startswith("add") else "missing from the models"
        return f"{what} {item.name} on {table} is {side}"
    if kind.startswith("modify_"):
        _, _, table, column, _info, old, new = diff
        return f"column {table}.{column}: {kind[len('modify_'):]} is {old!r} in the database, {new!r} in the models"
    return repr(diff)


def revision(message: str, *, script_location: Path | None = None) -> Path:
    """Write the next revision (``000N_<slug>.py``), autogenerated from the models, and return its path.

    The operations are compared against a scratch SQLite database migrated to the current head; review the
    file (and keep it portable to PostgreSQL) before adding its id to ``schema_version.REVISIONS``.
    """
    location = script_location or migrations_dir()
    script = ScriptDirectory.from_config(alembic_config(script_location=location))
    numbers = [int(r.revision) for r in script.walk_revisions() if re.fullmatch(r"\d+", r.revision)]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/scratch.db"
        engine = db.make_engine(url)
        try:
            with _migration_connection(engine) as connection:
                cfg = alembic_config(connection, script_location=location)
                command.upgrade(cfg, "head")
                written = command.revision(cfg, message=message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    assert written is not None and not isinstance(written, list)
    return Path(written.path)

