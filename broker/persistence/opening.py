"""Opening the configured database at start: :func:`open_database`.

It checks the schema revision with plain SQL (alembic is imported only when an upgrade actually runs, to
keep start-up fast), migrates an embedded SQLite database itself, and refuses a PostgreSQL database that is
not at the head revision, because migrating a shared server is an operator's decision (``broker db
upgrade``). A module of its own above :mod:`broker.persistence.db` and :mod:`broker.persistence.migrate`,
which is built on ``db``.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.engine import Engine

from broker.errors import DatabaseError
from broker.persistence.db import current_revision, display_url, make_engine, normalise_url, revision_problem
from broker.persistence.schema_version import HEAD_REVISION, REVISIONS

log = logging.getLogger("broker.persistence.db")


def open_database(settings: Any, *, auto_migrate: bool, application_name: str | None = None) -> Engine:
    """The engine of the configured database, checked to be at the head revision.

    With ``auto_migrate``, a SQLite database that is empty or at an older revision is created and migrated
    here (the embedded default works with no set-up). PostgreSQL is never migrated implicitly: a database
    not at the head raises DatabaseError naming the revisions and ``broker db upgrade``.
    """
    url = normalise_url(settings.database_url())
    engine = make_engine(url, settings, application_name=application_name)
    try:
        revision = current_revision(engine)
        problem = revision_problem(revision, url)
        if problem is None:
            return engine
        known = revision is None or revision in REVISIONS
        if auto_migrate and known and url.get_backend_name() == "sqlite":
            from broker.persistence import migrate  # imports alembic: only when there is work to do

            migrate.upgrade(engine)
            if revision is None:  # the one line a new user sees about the embedded database
                log.info("created database %s (revision %s)", display_url(url), HEAD_REVISION)
            else:
                log.info("migrated database %s from revision %s to %s", display_url(url), revision, HEAD_REVISION)
            return engine
        raise DatabaseError(problem)
    except BaseException:
        engine.dispose()
        raise


__all__ = ["open_database"]
