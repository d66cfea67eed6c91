"""Engines and sessions: SQLite (the embedded default) and PostgreSQL through psycopg 3.

SQLite connections run in WAL mode (readers never block the writer) with foreign keys on, the configured
busy timeout and ``synchronous`` level (``full`` by default: a commit survives power loss). PostgreSQL URLs
without a driver (``postgresql://``) are rewritten to psycopg 3.

:func:`broker.persistence.opening.open_database` is what a broker process calls at start (built on this
module and, only when it migrates, on :mod:`broker.persistence.migrate`, which is built on this one too).

The sqlite3 driver's own transaction handling is kept on purpose: it begins a transaction at the first
write, so a transaction's reads before that write are not isolated, but a writer waits for the lock (up to
the busy timeout) instead of failing when another connection committed since its first read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool

from broker.config import DatabaseSettings
from broker.errors import ConfigError, DatabaseError
from broker.persistence.schema_version import HEAD_REVISION, REVISIONS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


#: bytes of the database file SQLite may memory-map for reads
SQLITE_MMAP_BYTES = 256 * 1024 * 1024
#: KiB of page cache per connection
SQLITE_CACHE_KIB = 32 * 1024
#: the values SQLite accepts for PRAGMA synchronous
SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")
#: the driver used for ``postgresql://`` URLs
POSTGRES_DRIVER = "postgresql+psycopg"


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``.

    Raises ConfigError for a malformed URL or a database other than SQLite and PostgreSQL.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid database URL {str(url)!r}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=POSTGRES_DRIVER)
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {parsed.get_backend_name()!r} in URL "
                          f"{parsed.render_as_string(hide_password=True)}: use sqlite:/// or postgresql://")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    """Whether the URL names a SQLite database."""
    return normalise_url(url).get_backend_name() == "sqlite"


def is_memory(url: URL) -> bool:
    """Whether a SQLite URL names an in-memory database."""
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def display_url(url: str | URL) -> str:
    """The URL as it may appear in messages and logs (password hidden)."""
    return normalise_url(url).render_as_string(hide_password=True)


def _database_settings(settings: Any) -> DatabaseSettings:
    # accept the whole Settings as well as its [database] section: callers usually hold the former
    if settings is None:
        return DatabaseSettings()
    return getattr(settings, "database", settings)


def make_engine(url: str | URL, settings: Any = None, *, pool_size: int | None = None,
                application_name: str | None = None, ping: bool = True) -> Engine:
    """An engine for ``url`` configured from ``settings`` (a Settings or DatabaseSettings; None: defaults).

    ``pool_size``: connections the pool keeps (SQLAlchemy's default: 5). ``application_name`` (PostgreSQL):
    how the connections show in ``pg_stat_activity``; a broker taking over an expired lease ends those of
    its holder by it. ``ping`` (PostgreSQL): ping each connection as the pool hands it out (see
    :func:`writer_engine` for the one engine that does not). Creates the directory of a SQLite file. Raises
    ConfigError for a bad URL or setting, DatabaseError when the directory cannot be created.
    """
    db = _database_settings(settings)
    parsed = normalise_url(url)
    pool = {} if pool_size is None else {"pool_size": pool_size}
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, db, pool)
    # pre-ping: a PostgreSQL restart must cost one reconnect, not one failed transaction per pooled connection
    if application_name:
        pool["connect_args"] = {"application_name": application_name}
    return create_engine(parsed, pool_pre_ping=ping, **pool)


def writer_engine(engine: Engine, settings: Any = None, application_name: str | None = None) -> Engine:
    """The engine of the writer's transactions: ``engine`` itself on SQLite; on PostgreSQL the same database
    through a small pool of its own whose connections are not pinged as they are handed out.

    The writer takes a connection for each commit, and the ping was one of the few round trips of each (with
    the lease's check and the writes sent in one pipeline, see broker.persistence.rawsql). A connection cut by
    a server restart fails one commit instead, which the store retries at once on a new connection (an
    OperationalError is "unreachable: the same batch will work later"); readers keep their ping, since a
    failed read would reach a client."""
    if engine.dialect.name != "postgresql":
        return engine
    return make_engine(engine.url, settings, pool_size=1, application_name=application_name, ping=False)


def _sqlite_engine(url: URL, db: DatabaseSettings, pool: dict[str, Any]) -> Engine:
    synchronous = db.sqlite_synchronous.strip().lower()
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ConfigError(f"[database] sqlite_synchronous: invalid value {db.sqlite_synchronous!r} "
                          f"(expected one of {', '.join(SYNCHRONOUS_LEVELS)})")
    if db.busy_timeout < 0:
        raise ConfigError(f"[database] busy_timeout: must not be negative, got {db.busy_timeout}")
    memory = is_memory(url)
    # connections move between threads (pool, actors); each is used by one thread at a time
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if memory:
        # one shared connection, or every session would see its own empty database
        options["poolclass"] = StaticPool
    else:
        options.update(pool)
        # SQLite would take "~" literally
        url = url.set(database=str(Path(url.database).expanduser()))
        directory = Path(url.database).resolve().parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(f"cannot create the database directory {directory}: {exc.strerror}") from None
    engine = create_engine(url, **options)
    busy_ms = int(db.busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # the timeout first: switching to WAL needs a lock another process may hold
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            # read pages through a memory map and keep more of them: the writer re-reads the same hot pages
            # (nodes, workflows, the end of events) in every transaction, one pread each without these
            cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        finally:
            cursor.close()

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (``expire_on_commit=False``)."""
    from sqlalchemy.orm import sessionmaker  # the ORM costs 0.1 s to import; engine-only users skip it

    return sessionmaker(bind=engine, expire_on_commit=False)


def read_revision(connection: Connection) -> str | None:
    """The schema revision recorded in ``alembic_version``; None for a database never migrated."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise DatabaseError(f"database has several schema revisions ({', '.join(sorted(rows))}); "
                            "this broker's migrations are linear")
    return rows[0] if rows else None


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (plain SQL, no alembic). Raises DatabaseError when unreachable."""
    try:
        with engine.connect() as connection:
            return read_revision(connection)
    except DBAPIError as exc:
        raise DatabaseError(f"cannot read database {display_url(engine.url)}: {driver_message(exc)}") from None


def revision_problem(revision: str | None, url: str | URL) -> str | None:
    """Why a database at ``revision`` cannot be used by this broker, or None when it is at the head."""
    if revision == HEAD_REVISION:
        return None
    where = display_url(url)
    if revision is None or revision in REVISIONS:
        shown = revision or "none (empty database)"
        return f"database {where} at revision {shown}, expected {HEAD_REVISION}: run `broker db upgrade`"
    return (f"database {where} at revision {revision}, which this broker does not know (expected "
            f"{HEAD_REVISION}): it was migrated by a newer broker; use that version, or downgrade the database "
            f"with it (`broker db downgrade {HEAD_REVISION}`)")


def driver_message(exc: DBAPIError) -> str:
    """The driver's first message line, without SQLAlchemy's statement dump."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
