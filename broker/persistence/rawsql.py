"""The writer's hot path: its few statement shapes sent straight to the database driver.

Every commit of the engine writes the same handful of statement shapes (node updates, events, outbox
rows, workflow updates). Through SQLAlchemy each execution costs about 0.2 ms of Python before the driver
is reached, several times the cost of the SQL itself, and the writer is the one thread every state change
goes through. So these shapes are rendered once per dialect and run with the driver's ``executemany``.
Values are converted here exactly as the SQLAlchemy column types would (UTC datetimes, JSON), and a test
reads rows written this way back through the ORM on both databases.

Event ids: the single writer takes them from the database's own counter (SQLite's ``sqlite_sequence``
of the AUTOINCREMENT table, PostgreSQL's sequence), so they stay in commit order and in step with rows
inserted through SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

#: node columns holding JSON, and datetimes (converted for the driver)
JSON_COLUMNS = frozenset({"outputs", "bindings", "properties"})
TIME_COLUMNS = frozenset({"retry_at", "started_at", "finished_at", "time", "applied_at"})

EVENT_COLUMNS = ("id", "workflow_id", "seq", "node_path", "actor", "level", "type", "state", "message", "time",
                 "properties")


class RawWriter:
    """Renders and runs the writer's statements for one dialect ("sqlite" or "postgresql")."""

    def __init__(self, dialect: str):
        self.dialect = dialect
        self.mark = "?" if dialect == "sqlite" else "%s"
        self._sql: dict[Any, str] = {}
        if dialect == "postgresql":
            from psycopg.types.json import Json  # imported here: SQLite needs no psycopg

            self._json = Json
        else:
            self._json = None

    # ------------------------------------------------------------------------------------ conversions

    def value(self, column: str, value: Any) -> Any:
        if value is None:
            return None
        if column in TIME_COLUMNS:
            utc = value.astimezone(dt.timezone.utc)
            if self.dialect == "sqlite":
                return utc.strftime("%Y-%m-%d %H:%M:%S.%f")
            return utc
        if column in JSON_COLUMNS:
            if self._json is not None:
                return self._json(value)
            return json.dumps(value)
        if self.dialect == "sqlite" and isinstance(value, bool):
            return int(value)
        return value

    # ------------------------------------------------------------------------------------- statements

    def update(self, cursor: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, dict[str, Any]]]) -> None:
        """``UPDATE table SET columns WHERE id = ?`` for every (id, values) row."""
        key = ("update", table, tuple(columns))
        sql = self._sql.get(key)
        if sql is None:
            sets = ", ".join(f"{c} = {self.mark}" for c in columns)
            sql = self._sql[key] = f"UPDATE {table} SET {sets} WHERE id = {self.mark}"
        cursor.executemany(sql, [tuple(self.value(c, values[c]) for c in columns) + (row_id,)
                                 for row_id, values in rows])

    def next_ids(self, cursor: Any, table: str, count: int) -> list[int]:
        """``count`` fresh ids of ``table``, increasing (the writer is the only one taking them)."""
        if self.dialect == "sqlite":
            cursor.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
            row = cursor.fetchone()
            if row is None:
                cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}")
                row = cursor.fetchone()
            first = int(row[0]) + 1
            return list(range(first, first + count))
        cursor.execute(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) FROM generate_series(1, %s)",
                       (count,))
        return sorted(int(r[0]) for r in cursor.fetchall())

    def insert(self, cursor: Any, table: str, columns: Sequence[str], rows: list[Sequence[Any]]) -> None:
        key = ("insert", table, tuple(columns))
        sql = self._sql.get(key)
        if sql is None:
            marks = ", ".join([self.mark] * len(columns))
            sql = self._sql[key] = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        cursor.executemany(sql, [tuple(self.value(c, v) for c, v in zip(columns, row)) for row in rows])
