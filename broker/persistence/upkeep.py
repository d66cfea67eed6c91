"""PostgreSQL upkeep after bulk deletes: the space deleted rows held, and the planner's statistics.

A DELETE leaves dead rows behind; PostgreSQL makes their space reusable only when the table is vacuumed.
Autovacuum normally does that a while later, but on a cluster where it is off the database never shrinks
and the tables keep growing (134 MB stayed 134 MB after 207,000 events and 347,000 outbox rows were
deleted). So the broker warns at start when autovacuum is off (server-wide, or for one of its tables), and
after a delete commits, it runs ``VACUUM (ANALYZE)`` on the tables the delete touched. Plain VACUUM takes
no lock that stops readers or the writer; it makes the space reusable and gives back only empty pages at a
table's end (``VACUUM FULL``, which rewrites a table under an exclusive lock, is left to the operator).
VACUUM cannot run inside a transaction: it runs on a connection of its own in autocommit mode. SQLite
needs none of this (its freed pages are reused; ``VACUUM`` there rewrites the whole file).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import text

from broker.persistence.models import Base, Workflow

log = logging.getLogger("broker.persistence.upkeep")


def deleted_tables() -> tuple[str, ...]:
    """The tables deleting workflows removes rows from: ``workflows`` and every table reached from it through
    ``ON DELETE CASCADE`` foreign keys (nodes, dependencies, events, outbox, elf sessions...)."""
    found = [Workflow.__tablename__]
    changed = True
    while changed:
        changed = False
        for table in Base.metadata.sorted_tables:
            if table.name in found:
                continue
            if any(fk.ondelete == "CASCADE" and fk.column.table.name in found for fk in table.foreign_keys):
                found.append(table.name)
                changed = True
    return tuple(found)


def _postgres(engine: Any) -> bool:
    return engine.dialect.name == "postgresql"


def autovacuum_problem(engine: Any) -> str | None:
    """Why autovacuum will not clean the broker's tables (server setting off, or off for some of them), or
    None. SQLite: always None."""
    if not _postgres(engine):
        return None
    tables = deleted_tables()
    with engine.connect() as c:
        if c.execute(text("SHOW autovacuum")).scalar_one() != "on":
            return "autovacuum is off on this PostgreSQL server"
        off = c.execute(text("SELECT relname FROM pg_class WHERE relname = ANY(:names) AND relkind = 'r' "
                             "AND reloptions @> ARRAY['autovacuum_enabled=false']").bindparams(names=list(tables)),
                        ).scalars().all()
    return f"autovacuum is off for table(s) {', '.join(sorted(off))}" if off else None


def warn_if_no_autovacuum(engine: Any) -> None:
    """Log one warning at start when autovacuum will not clean the broker's tables."""
    try:
        problem = autovacuum_problem(engine)
    except Exception as exc:  # a check, not a reason to refuse to start
        log.debug("could not check autovacuum: %s", exc)
        return
    if problem:
        log.warning("%s: space freed by deleting workflows is reused only after a VACUUM; the broker vacuums "
                    "the tables after its own deletes, anything else is the operator's (see README "
                    "\"Sizing\")", problem)


def vacuum_deleted(engine: Any) -> float | None:
    """``VACUUM (ANALYZE)`` the tables a workflow delete touched, outside any transaction; the seconds it
    took, or None when there is nothing to do (SQLite) or it failed (logged: the delete itself stands)."""
    if not _postgres(engine):
        return None
    started = time.monotonic()
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text(f"VACUUM (ANALYZE) {', '.join(deleted_tables())}"))
    except Exception as exc:
        log.warning("VACUUM after the delete failed (autovacuum, or the next delete, will do it): %s", exc)
        return None
    took = time.monotonic() - started
    log.info("vacuumed %s after the delete in %.2f s", ", ".join(deleted_tables()), took)
    return took


__all__ = ["autovacuum_problem", "deleted_tables", "vacuum_deleted", "warn_if_no_autovacuum"]
