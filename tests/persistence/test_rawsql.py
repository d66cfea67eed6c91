"""The writer's conversions for the driver (broker.persistence.rawsql), checked against the ORM's reading.

The end-to-end check is that every engine test reads back through the ORM what the writer wrote this way;
these pin the conversions that are easy to get subtly wrong: the one-entry time cache, and rows whose few
converted columns sit among many that are passed as they are.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from broker.persistence.models import Event
from broker.persistence.rawsql import EVENT_COLUMNS, RawWriter

UTC = dt.timezone.utc
PLUS2 = dt.timezone(dt.timedelta(hours=2))


def test_each_time_converts_to_its_own_utc_text_whatever_came_before():
    first = dt.datetime(2026, 12, 7, 5, 0, 0, 0, tzinfo=PLUS2)
    second = dt.datetime(2026, 12, 7, 3, 0, 0, 1, tzinfo=UTC)  # the same hour in UTC, one microsecond later
    equal_to_first = dt.datetime(2026, 12, 7, 3, 0, 0, 0, tzinfo=UTC)  # equal, but another object
    convert = _time_converter(RawWriter("sqlite"))
    assert convert(first) == "2026-12-07 03:00:00.000000"
    assert convert(first) == "2026-12-07 03:00:00.000000"  # from the cache
    assert convert(second) == "2026-12-07 03:00:00.000001"
    assert convert(equal_to_first) == "2026-12-07 03:00:00.000000"
    assert convert(None) is None
    assert _time_converter(RawWriter("postgresql"))(first) == equal_to_first


def _time_converter(raw: RawWriter):
    """The converter the writer applies to a time column (the one an insert of events would use)."""
    ((column, convert),) = [pair for pair in raw._converters(EVENT_COLUMNS) if pair[0] == "time"]
    assert convert is not None
    return convert


def test_rows_keep_their_values_in_place_with_only_their_few_columns_converted(session):
    raw = RawWriter(session.get_bind().dialect.name)
    now = dt.datetime(2026, 12, 7, 4, 5, 6, 789000, tzinfo=UTC)
    rows = [(1000 + i, None, None, f"n{i}", "test", 2, "SERVICE", None, f"m{i}", now,
             {"i": i, "text": "<&>"} if i % 2 else None) for i in range(5)]
    cursor = session.connection().connection.driver_connection.cursor()
    try:
        raw.insert(cursor, "events", EVENT_COLUMNS, iter(rows))
    finally:
        cursor.close()
    got = session.execute(select(Event).where(Event.id >= 1000).order_by(Event.id)).scalars().all()
    assert [(e.id, e.node_path, e.message, e.time, e.properties) for e in got] == [
        (r[0], r[3], r[8], now, r[10]) for r in rows]
