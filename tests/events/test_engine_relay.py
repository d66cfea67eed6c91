"""The relay inside the engine (`broker run` and `broker serve` both use Engine): started only with a bus."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from broker.events.publishers import MemoryBus
from broker.events.routing import ALL_EVENTS_TOPIC
from broker.persistence.models import Outbox
from broker.states import WorkflowState
from tests.engine.helpers import Broker
from tests.events.helpers import FAST, all_sent, published_rows, reading, sweep_document


@pytest.mark.slow
def test_without_an_events_url_no_relay_runs_and_events_are_only_stored(migrated_url, tmp_path):
    broker = Broker(migrated_url, tmp_path).start()
    try:
        wf, state = broker.run(sweep_document())
        assert state is WorkflowState.SUCCEEDED
        assert broker.engine.relay is None
        assert broker.events(wf)
        # no outbox rows at all: they would never be sent (a later broker with a bus does not publish them)
        assert published_rows(broker.sessions, ALL_EVENTS_TOPIC, wf) == []
        with broker.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Outbox)) == 0
    finally:
        broker.stop()


@pytest.mark.slow
def test_with_a_bus_every_event_of_a_run_is_published_by_the_time_the_engine_stopped(migrated_url, tmp_path):
    bus = MemoryBus.named(f"engine-{uuid.uuid4().hex}")
    broker = Broker(migrated_url, tmp_path)
    # a poll interval far beyond the test: only the writer's wake-ups and the stop's drain can publish
    broker.settings = broker.settings.replace("events", url=f"memory://{bus.name}", **{**FAST, "poll_interval": 3600})
    broker.start()
    try:
        wf, state = broker.run(sweep_document(eventLevel="DEBUG"))
        assert state is WorkflowState.SUCCEEDED
    finally:
        broker.stop()
    with reading(migrated_url) as sessions:
        assert all_sent(sessions, wf)
        rows = published_rows(sessions, ALL_EVENTS_TOPIC, wf)
    got = [int(m.headers["eventId"]) for m in bus.messages if m.destination == ALL_EVENTS_TOPIC]
    assert got == [event_id for event_id, _, _ in rows]
    assert [int(m.headers["seq"]) for m in bus.messages if m.destination == ALL_EVENTS_TOPIC] == list(
        range(1, len(rows) + 1))
