"""The relay inside the engine (`broker run` and `broker serve` both use Engine): started only with a bus."""

from __future__ import annotations

import uuid

from broker.events.publishers import MemoryBus
from broker.events.routing import ALL_EVENTS_TOPIC
from broker.states import WorkflowState
from tests.engine.conftest import Broker
from tests.events.helpers import FAST, all_sent, published_rows, reading, sweep_document


def test_without_an_events_url_no_relay_runs_and_events_are_only_stored(migrated_url, tmp_path):
    broker = Broker(migrated_url, tmp_path).start()
    try:
        wf, state = broker.run(sweep_document())
        assert state is WorkflowState.SUCCEEDED
        assert broker.engine.relay is None
        rows = published_rows(broker.sessions, ALL_EVENTS_TOPIC, wf)
        assert rows and not any(sent for _, _, sent in rows)
    finally:
        broker.stop()


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
