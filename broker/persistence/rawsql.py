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

import contextlib
import datetime as dt
import itertools
import json
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from broker.persistence import attempts

if TYPE_CHECKING:
    from broker.persistence.lease import Lease
    from broker.persistence.writeset import WriteSet
    from broker.persistence.graph import MNode

#: node columns holding JSON, and datetimes (converted for the driver)
JSON_COLUMNS = frozenset({"outputs", "bindings", "properties", "spawn"})
TIME_COLUMNS = frozenset({"retry_at", "started_at", "finished_at", "time", "applied_at", "created_at", "queued_at"})
BOOL_COLUMNS = frozenset({"cancel_requested"})

#: rows per executemany: an expansion of 100,000 members then never holds every converted row at once
CHUNK_ROWS = 5000
#: rows per multi-row INSERT: 64 rows of 14 columns stay under SQLite's oldest limit of 999 parameters
VALUES_ROWS = 64

EVENT_COLUMNS = ("id", "workflow_id", "seq", "node_path", "actor", "level", "type", "state", "message", "time",
                 "properties")
#: an event row's values after its id, in EVENT_COLUMNS order
_EVENT_VALUES = operator.itemgetter(*EVENT_COLUMNS[1:])


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def time_for_driver(value: dt.datetime, sqlite: bool) -> Any:
    """``value`` as its DateTime column takes it: UTC, and on SQLite the naive text SQLAlchemy's DateTime
    writes and reads back (so rows written here and through the ORM sort and compare alike)."""
    utc = value.astimezone(dt.timezone.utc)
    return utc.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else utc


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
        #: (the last datetime converted, its conversion): see _time
        self._last_time: tuple[dt.datetime, Any] | None = None

    # ------------------------------------------------------------------------------------ conversions

    def _time(self, value: dt.datetime | None) -> Any:
        if value is None:
            return None
        # a commit stamps its rows with one time (batch.now): convert it once, not once per row and column
        last = self._last_time
        if last is not None and last[0] is value:
            return last[1]
        out = time_for_driver(value, self.dialect == "sqlite")
        self._last_time = (value, out)
        return out

    def _json_value(self, value: Any) -> Any:
        if value is None:
            return None
        return self._json(value) if self._json is not None else json.dumps(value)

    def _converters(self, columns: Sequence[str]) -> list[tuple[str, Any]]:
        """(column, converter or None) per column: most columns need no conversion at all."""
        out: list[tuple[str, Any]] = []
        for column in columns:
            if column in TIME_COLUMNS:
                out.append((column, self._time))
            elif column in JSON_COLUMNS:
                out.append((column, self._json_value))
            elif self.dialect == "sqlite" and column in BOOL_COLUMNS:
                out.append((column, _int_or_none))
            else:
                out.append((column, None))
        return out

    def update(self, cursor: Any, table: str, columns: Sequence[str], rows: list[tuple[Any, dict[str, Any]]]) -> None:
        """``UPDATE table SET columns WHERE id = ?`` for every (id, values) row."""
        key = ("update", table, tuple(columns))
        cached = self._sql.get(key)
        if cached is None:
            sets = ", ".join(f"{c} = {self.mark}" for c in columns)
            cached = self._sql[key] = (f"UPDATE {table} SET {sets} WHERE id = {self.mark}", self._converters(columns))
        sql, converters = cached
        cursor.executemany(sql, [tuple(values[c] if f is None else f(values[c]) for c, f in converters) + (row_id,)
                                 for row_id, values in rows])

    def delete_nodes(self, cursor: Any, ids: Sequence[int]) -> None:
        """Delete node rows and their dependency edges (elf sessions go with them through their foreign key)."""
        for start in range(0, len(ids), CHUNK_ROWS):
            chunk = list(ids[start:start + CHUNK_ROWS])
            marks = ", ".join([self.mark] * len(chunk))
            cursor.execute(f"DELETE FROM dependencies WHERE parent_id IN ({marks}) OR child_id IN ({marks})",
                           chunk + chunk)
            cursor.execute(f"DELETE FROM nodes WHERE id IN ({marks})", chunk)

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

    def insert(self, cursor: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """``INSERT INTO table (columns)`` every row, :data:`CHUNK_ROWS` at a time (rows may be a generator)."""
        key = ("insert", table, tuple(columns))
        cached = self._sql.get(key)
        if cached is None:
            marks = ", ".join([self.mark] * len(columns))
            cached = self._sql[key] = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                                       [f for _, f in self._converters(columns)])
        sql, converters = cached
        # only the few columns that need it are converted (a generator over every value cost more than the SQL)
        converted = [(i, f) for i, f in enumerate(converters) if f is not None]
        if not converted:
            convert: Any = tuple
        else:
            def convert(row: Sequence[Any]) -> list[Any]:
                out = list(row)
                for i, f in converted:
                    out[i] = f(out[i])
                return out
        it = iter(rows)
        while chunk := [convert(row) for row in itertools.islice(it, CHUNK_ROWS)]:
            cursor.executemany(sql, chunk)

    def insert_values(self, cursor: Any, table: str, columns: Sequence[str], rows: list[Sequence[Any]]) -> None:
        """``INSERT INTO table (columns) VALUES (...), (...)``: one statement per :data:`VALUES_ROWS` rows.

        A commit's attempt rows are few and of one shape; one multi-row statement costs the driver one round
        trip and one parse where ``executemany`` costs one per row (psycopg) or one step per row (SQLite)."""
        converters = [f for _, f in self._converters(columns)]
        for start in range(0, len(rows), VALUES_ROWS):
            chunk = rows[start:start + VALUES_ROWS]
            key = ("values", table, tuple(columns), len(chunk))
            sql = self._sql.get(key)
            if sql is None:
                one = "(" + ", ".join([self.mark] * len(columns)) + ")"
                sql = self._sql[key] = f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ", ".join(
                    [one] * len(chunk))
            cursor.execute(sql, [v if f is None else f(v) for row in chunk for f, v in zip(converters, row)])

    def update_attempts(self, cursor: Any, rows: list[tuple[int, int, dict[str, Any]]]) -> None:
        """``UPDATE attempts SET ... WHERE node_id = ? AND number = ?``, one executemany per column shape."""
        shapes: dict[tuple[str, ...], list[tuple[int, int, dict[str, Any]]]] = {}
        for node_id, number, cols in rows:
            shapes.setdefault(tuple(sorted(cols)), []).append((node_id, number, cols))
        for columns, group in shapes.items():
            key = ("attempts", columns)
            cached = self._sql.get(key)
            if cached is None:
                sets = ", ".join(f"{c} = {self.mark}" for c in columns)
                cached = self._sql[key] = (
                    f"UPDATE attempts SET {sets} WHERE node_id = {self.mark} AND number = {self.mark}",
                    self._converters(columns))
            sql, converters = cached
            cursor.executemany(sql, [tuple(cols[c] if f is None else f(cols[c]) for c, f in converters)
                                     + (node_id, number) for node_id, number, cols in group])

    # ------------------------------------------------------------------------------------------ batches

    def write(self, s: Session, batch: WriteSet, guard: Lease | None = None) -> None:
        """Write a batch's node updates, events, outbox rows, workflow updates and control marks; with a
        ``guard`` (PostgreSQL: the lease), check first that this process may still write (LeaseLost)."""
        driver = s.connection().connection.driver_connection  # type: ignore[union-attr]
        cursor = driver.cursor()
        checked = driver.cursor() if guard is not None else None
        try:
            with self._pipeline(driver):
                # the answers the writes wait for, in one round trip: the lease's check and the event ids
                verify = guard.queue_check(checked) if guard is not None else None
                ids = self.next_ids(cursor, "events", len(batch.events)) if batch.events else []
                if verify is not None:
                    verify()
                self._write(cursor, batch, ids)
        finally:
            cursor.close()
            if checked is not None:
                checked.close()

    def _pipeline(self, driver: Any) -> Any:
        """On PostgreSQL, the statements that need no answer go out together, with one round trip for all
        (each ``executemany`` would otherwise wait for its own: five or six per commit, each also a wait for
        the interpreter lock when the writer thread wakes); SQLite runs them in process."""
        return driver.pipeline() if self.dialect == "postgresql" else contextlib.nullcontext()

    def _write(self, cursor: Any, batch: WriteSet, ids: list[int]) -> None:
        self._update_shapes(cursor, "nodes", batch.node_cols.values())
        if batch.attempts:
            self._write_attempts(cursor, batch)
        if batch.events:
            self.insert(cursor, "events", EVENT_COLUMNS,
                        ((event_id, *_EVENT_VALUES(row)) for event_id, (row, _) in zip(ids, batch.events)))
            self.insert(cursor, "outbox", ("event_id", "destination"),
                        ((event_id, dest) for event_id, (_, dests) in zip(ids, batch.events) for dest in dests))
        self._update_shapes(cursor, "workflows", batch.wf_cols.values())
        if batch.controls:
            self.update(cursor, "control", ("applied_at", "result"),
                        [(i, {"applied_at": batch.now, "result": r}) for i, r in batch.controls])
        if batch.deleted:
            self.delete_nodes(cursor, batch.deleted)

    def _update_shapes(self, cursor: Any, table: str, changed: Iterable[tuple[Any, dict[str, Any]]]) -> None:
        """Update ``table``'s rows (objects with an id, and their changed columns): one statement per set of
        columns changed together."""
        shapes: dict[tuple[str, ...], list[tuple[Any, dict[str, Any]]]] = {}
        for row, cols in changed:
            shapes.setdefault(tuple(sorted(cols)), []).append((row.id, cols))
        for columns, rows in shapes.items():
            self.update(cursor, table, columns, rows)

    def _write_attempts(self, cursor: Any, batch: WriteSet) -> None:
        new = [attempts.insert_row(node, number, cols) for node, number, cols, is_new in batch.attempts.values()
               if is_new]
        if new:
            self.insert_values(cursor, "attempts", attempts.COLUMNS, new)
        changed = [(node.id, number, attempts.update_columns(cols))
                   for node, number, cols, is_new in batch.attempts.values() if not is_new and cols]
        if changed:
            self.update_attempts(cursor, changed)

    def insert_created(self, s: Session, batch: WriteSet) -> None:
        """Insert the members and body nodes of expansions, then their edges, with ids taken up front."""
        cursor = s.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            members = [m for m, _, _ in batch.creations if m is not None]
            for member, new_id in zip(members, self.next_ids(cursor, "nodes", len(members))):
                member.id = new_id
            self.insert(cursor, "nodes", NODE_COLUMNS, (_node_row(m, batch) for m in members))
            body = [n for _, nodes, _ in batch.creations for n in nodes]
            for node, new_id in zip(body, self.next_ids(cursor, "nodes", len(body))):
                node.id = new_id
            self.insert(cursor, "nodes", NODE_COLUMNS, (_node_row(n, batch) for n in body))
            self.insert(cursor, "dependencies", ("parent_id", "child_id"),
                        ((nodes[p].id, nodes[ch].id) for _, nodes, es in batch.creations for p, ch in es))
        finally:
            cursor.close()


NODE_COLUMNS = ("id", "workflow_id", "path", "template", "kind", "parent_id", "member_index", "bindings", "state",
                "priority", "attempt", "retries", "created_at")


def _node_row(node: MNode, batch: WriteSet) -> tuple[Any, ...]:
    return (node.id, node.wf.id, node.path, node.template, node.kind,
            node.parent.id if node.parent is not None else None, node.member_index,
            [list(p) for p in node.bindings] or None, node.state.value, node.priority, 0, 0, batch.now)
