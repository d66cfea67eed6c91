"""The column types and index helpers of the mapped classes in :mod:`broker.persistence.models`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, TypeDecorator, text

#: the partial indexes, each with its WHERE clause; their PostgreSQL form is added by postgresql_partial_indexes()
PARTIAL_INDEXES: list[tuple[Index, str]] = []


def partial_index(name: str, column: str, *, where: str) -> Index:
    """An index of the rows matching ``where`` only, as SQLite declares it.

    Its PostgreSQL form (``postgresql_where``) is added by :func:`postgresql_partial_indexes`, called where
    the models are compared with a schema (broker.persistence.migrate): declared here, it would load
    SQLAlchemy's PostgreSQL dialect (about 50 ms) at every start of a `broker run` on SQLite. The migrations
    create the indexes.
    """
    index = Index(name, column, sqlite_where=text(where))
    PARTIAL_INDEXES.append((index, where))
    return index


def postgresql_partial_indexes() -> None:
    """Give each partial index its PostgreSQL WHERE clause (again: the same; loads the PostgreSQL dialect)."""
    for index, where in PARTIAL_INDEXES:
        index.dialect_kwargs["postgresql_where"] = text(where)


#: a 64-bit integer primary key that still autoincrements on SQLite (which only does so for INTEGER)
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC datetime on every database (SQLite stores naive text, so normalise both ways)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
