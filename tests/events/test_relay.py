"""The outbox relay on the in-memory bus and a real database (SQLite and PostgreSQL).

Rows are written as the engine writes them (broker.persistence.repository: an event plus one outbox row
per destination), then the relay is started and watched from the bus's side and the database's side.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import insert, select

from broker.config import EventsSettings
from broker.configload import load_settings
from broker.description.load import load_description
from broker.errors import ConfigError
from broker.events import document
from broker.events.publishers import MemoryBus
from broker.events.relay import OutboxRelay, backoff_delay
from broker.events.routing import ALL_EVENTS_TOPIC, user_topic
from broker.events.types import EventType
from broker.persistence import repository
from broker.persistence.models import Outbox, Workflow
from tests.engine.helpers import workflow
from tests.fixtures import wait_for

FAST = {"reconnect_initial": 0.01, "reconnect_max": 0.05, "receipt_timeout": 2.0, "poll_interval": 0.05,
        "stop_timeout": 5.0}


@pytest.fixture
def bus() -> MemoryBus:
    return MemoryBus.named(f"test-{uuid.uuid4().hex}")


@pytest.fixture
def relays():
    """Start relays for a test; every one is stopped at its end."""
    started: list[OutboxRelay] = []

    def start(sessions: Any, bus: MemoryBus, **events: Any) -> OutboxRelay:
        settings = EventsSettings(url=f"memory://{bus.name}", **{**FAST, **events})
        relay = OutboxRelay.from_settings(settings, sessions)
        assert relay is not None
        started.append(relay.start())
        return relay

    yield start
    for relay in started:
        relay.stop()


def submit(sessions: Any, owner: str = "alice", **attrs: str) -> Workflow:
    """Store a one-node workflow as a submission does (its WORKFLOW_SUBMITTED event and outbox rows)."""
    doc = workflow('<node id="a"><payload type="sh">true</payload></node>', **attrs)
    spec = load_description(doc, load_settings(environ={}), filename="t.xml")
    with sessions.begin() as s:
        user = repository.ensure_user(s, owner)
        return repository.submit_workflow(s, spec, descriptor=doc.decode(), owner=user)


def add_events(sessions: Any, wf: Workflow, count: int, event_type: EventType = EventType.NODE_STATE,
               **fields: Any) -> None:
    """Record ``count`` more events of a workflow (one transaction, in sequence order)."""
    with sessions.begin() as s:
        row = s.get(Workflow, wf.id)
        for i in range(count):
            repository.add_event(s, row, type=event_type, actor="test", node_path="a", state="running",
                                 message=f"event {i}", **fields)


def outbox(sessions: Any) -> list[tuple[int, str, int, bool]]:
    """(outbox id, destination, event id, sent) of every row, in id order."""
    with sessions() as s:
        return [(r.id, r.destination, r.event_id, r.sent_at is not None)
                for r in s.execute(select(Outbox).order_by(Outbox.id)).scalars()]


def sent_count(sessions: Any) -> int:
    return sum(1 for row in outbox(sessions) if row[3])


def delivered(bus: MemoryBus) -> list[tuple[str, str]]:
    """(destination, event id) of every message the bus took, in order."""
    with bus.cond:
        return [(m.destination, m.headers["eventId"]) for m in bus.messages]


def expected(sessions: Any) -> list[tuple[str, str]]:
    return [(dest, str(event_id)) for _, dest, event_id, _ in outbox(sessions)]


# ------------------------------------------------------------------------------------------ publishing

@pytest.mark.slow
def test_every_outbox_row_is_published_in_id_order_and_then_marked_sent(sessions, bus, relays):
    wf = submit(sessions)
    add_events(sessions, wf, 30)
    relays(sessions, bus, window=7)  # several windows
    wait_for(lambda: sent_count(sessions) == 62, what="every row marked sent")
    assert delivered(bus) == expected(sessions)
    seqs = [int(m.headers["seq"]) for m in bus.messages if m.destination == ALL_EVENTS_TOPIC]
    assert seqs == list(range(1, 32))
    for message in bus.messages:
        assert document.validation_errors(message.body) == []
        assert message.headers["persistent"] == "true" and message.headers["workflowId"] == wf.global_id


def test_nothing_is_marked_sent_before_the_bus_sends_its_receipt(sessions, bus, relays):
    bus.hold = True
    wf = submit(sessions)
    add_events(sessions, wf, 3)
    relays(sessions, bus, receipt_timeout=30.0)
    assert bus.wait_for(8, timeout=30), "the relay published the window"
    assert sent_count(sessions) == 0  # published, receipts held back: nothing may be marked yet
    bus.hold = False
    bus.release()
    wait_for(lambda: sent_count(sessions) == 8, what="rows marked once their receipts arrived")
    assert delivered(bus) == expected(sessions)


def test_a_window_whose_receipts_never_come_is_published_again_with_the_same_bodies(sessions, bus, relays):
    bus.hold = True
    wf = submit(sessions)
    add_events(sessions, wf, 2)
    relays(sessions, bus, receipt_timeout=0.2)
    assert bus.wait_for(12, timeout=30), "the unconfirmed window went out again after the timeout"
    assert sent_count(sessions) == 0
    bus.hold = False
    bus.release()
    wait_for(lambda: sent_count(sessions) == 6, what="the window confirmed at last")
    first: dict[tuple[str, str], bytes] = {}
    for message in bus.messages:
        key = (message.destination, message.headers["eventId"])
        assert first.setdefault(key, message.body) == message.body, f"a repeat of {key} differs"
    # every round republished the whole window in order: each copy of the window is the same sequence
    order = expected(sessions)
    got = delivered(bus)
    assert got[:len(order)] == order and len(got) % len(order) == 0


def test_while_the_bus_is_down_events_accumulate_and_then_drain_in_order(sessions, bus, relays):
    wf = submit(sessions)
    relay = relays(sessions, bus)
    wait_for(lambda: sent_count(sessions) == 2, what="the first event published")
    bus.set_down(True)
    add_events(sessions, wf, 20)
    relay.wake()
    wait_for(lambda: relay.ref.proxy().failures.get() >= 3, what="several failed attempts while the bus is down")
    assert sent_count(sessions) == 2 and len(delivered(bus)) == 2
    bus.set_down(False)
    wait_for(lambda: sent_count(sessions) == 42, what="the backlog drained")
    assert delivered(bus) == expected(sessions)


def test_the_next_window_is_on_the_bus_while_the_last_is_marked_and_committed_only_after(sessions, bus, relays,
                                                                                         monkeypatch):
    from broker.events import relay as relay_module

    wf = submit(sessions)
    add_events(sessions, wf, 10)  # 22 rows: windows of 5, 5, 5, 5, 2
    seen = []  # at each mark: (rows marked so far + this window, messages delivered, messages staged)
    real_mark = relay_module.mark_sent
    started: dict[str, Any] = {}

    def mark(sessions_: Any, ids: Any, now: Any) -> None:
        # the relay starts at once and may mark its first window before relays() has returned it to the test
        wait_for(lambda: "relay" in started, what="the relay handed to the test")
        staged = sum(len(messages) for messages, _ in started["relay"].publisher._open.values())
        seen.append((sent_count(sessions) + len(ids), len(delivered(bus)), staged))
        real_mark(sessions_, ids, now)

    monkeypatch.setattr(relay_module, "mark_sent", mark)
    started["relay"] = relays(sessions, bus, window=5)
    wait_for(lambda: sent_count(sessions) == 22, what="every row marked sent")
    assert delivered(bus) == expected(sessions)
    # nothing of a window is delivered before the one ahead of it is marked, though its messages are on the
    # bus already (uncommitted) while the full windows are marked
    assert [(marked, got) for marked, got, _ in seen] == [(5, 5), (10, 10), (15, 15), (20, 20), (22, 22)]
    assert [staged for _, _, staged in seen[:3]] == [5, 5, 5]


def test_a_failed_mark_discards_the_staged_window_so_nothing_overtakes_the_window_sent_again(sessions, bus, relays,
                                                                                             monkeypatch):
    from sqlalchemy.exc import OperationalError

    from broker.events import relay as relay_module

    wf = submit(sessions)
    add_events(sessions, wf, 10)
    real_mark, calls = relay_module.mark_sent, []

    def mark(sessions_: Any, ids: Any, now: Any) -> None:
        calls.append(list(ids))
        if len(calls) == 1:
            raise OperationalError("UPDATE outbox", {}, Exception("database is locked"))
        real_mark(sessions_, ids, now)

    monkeypatch.setattr(relay_module, "mark_sent", mark)
    relays(sessions, bus, window=5)
    wait_for(lambda: sent_count(sessions) == 22, what="every row marked sent after the failed mark")
    order = expected(sessions)
    # the first window went out twice, and the second (on the bus, uncommitted, at the failed mark) only after
    assert delivered(bus) == order[:5] + order


@pytest.mark.parametrize("poll_interval", [0.05, 3600.0], ids=["polled", "no-poll"])
def test_a_returning_bus_is_found_by_the_probe_long_before_the_backoff_ends(sessions, bus, relays, poll_interval):
    wf = submit(sessions)
    # a backoff of a minute after the first failure: only the probes can find the bus sooner; without a poll
    # (and no commit after the outage) the probes must keep their own schedule
    relay = relays(sessions, bus, reconnect_initial=60.0, reconnect_max=60.0, probe_interval=0.1,
                   poll_interval=poll_interval)
    wait_for(lambda: sent_count(sessions) == 2, what="the first event published")
    bus.set_down(True)
    add_events(sessions, wf, 5)
    relay.wake()
    wait_for(lambda: relay.ref.proxy().failures.get() >= 1, what="a failed attempt while the bus is down")
    back = time.monotonic()
    bus.set_down(False)  # no commit afterwards: no ring of the doorbell
    wait_for(lambda: sent_count(sessions) == 12, what="the backlog drained", deadline=10)
    assert time.monotonic() - back < 5
    assert delivered(bus) == expected(sessions)


def test_a_commit_wakes_the_relay_at_once_without_waiting_for_the_poll_interval(sessions, bus, relays):
    wf = submit(sessions)
    relay = relays(sessions, bus, poll_interval=3600.0)
    wait_for(lambda: sent_count(sessions) == 2, what="the rows present at start (a first round at start)")
    add_events(sessions, wf, 1)
    started = time.monotonic()
    relay.wake(wf.id, wf.global_id, None, {})  # what the writer calls after its commit
    wait_for(lambda: sent_count(sessions) == 4, what="the new event published", deadline=10)
    assert time.monotonic() - started < 5.0


def test_a_refused_event_is_retried_then_skipped_after_max_rejections_and_later_ones_go_on(sessions, bus, relays,
                                                                                          caplog):
    wf = submit(sessions, publishMetadataTo="/queue/forbidden")
    add_events(sessions, wf, 1)
    bus.refuse["/queue/forbidden"] = "User alice is not authorized to write to: queue://forbidden"
    relays(sessions, bus, max_rejections=3)
    wait_for(lambda: sent_count(sessions) == 5, what="every row settled")
    assert ("/queue/forbidden", "1") not in delivered(bus)
    # a window with a refused message fails as a whole (nothing of it delivered): no event went out twice
    assert delivered(bus) == [(d, e) for d, e in expected(sessions) if d != "/queue/forbidden"]
    assert any("refused 3 times" in r.getMessage() and "NOT published" in r.getMessage() for r in caplog.records)


def test_with_max_rejections_zero_a_refused_event_holds_back_the_events_behind_it(sessions, bus, relays):
    wf = submit(sessions, publishMetadataTo="/queue/forbidden")
    bus.refuse["/queue/forbidden"] = "not authorized"
    relay = relays(sessions, bus, max_rejections=0)
    wait_for(lambda: relay.ref.proxy().failures.get() >= 5, what="repeated refusals")
    add_events(sessions, wf, 1)
    assert sent_count(sessions) == 2  # the two topics before the refused row; nothing after it
    del bus.refuse["/queue/forbidden"]
    wait_for(lambda: sent_count(sessions) == 5, what="everything once the bus accepts")
    assert [e for _, e in delivered(bus)][-3:] == ["1", "2", "2"]


def test_a_refusal_on_the_brokers_own_topics_is_never_skipped_whatever_max_rejections(sessions, bus, relays):
    submit(sessions)
    bus.refuse[ALL_EVENTS_TOPIC] = "not authorized to write"
    relay = relays(sessions, bus, max_rejections=1)
    wait_for(lambda: relay.ref.proxy().failures.get() >= 4, what="repeated refusals")
    assert sent_count(sessions) == 0 and delivered(bus) == []
    del bus.refuse[ALL_EVENTS_TOPIC]
    wait_for(lambda: sent_count(sessions) == 2, what="both rows once the bus allows them")
    assert delivered(bus) == expected(sessions)


# ---------------------------------------------------------------------------------------------- levels

def test_a_row_above_its_workflows_event_level_is_never_published_even_if_queued(sessions, bus, relays, caplog):
    wf = submit(sessions)  # eventLevel STATUS (the default)
    with sessions.begin() as s:
        row = s.get(Workflow, wf.id)
        launch = repository.add_event(s, row, type=EventType.NODE_LAUNCH, actor="test", node_path="a")
        # a DEBUG event has no outbox row at STATUS; one written anyway (a foreign writer) must not go out
        s.execute(insert(Outbox.__table__), [{"event_id": launch, "destination": ALL_EVENTS_TOPIC}])
    add_events(sessions, wf, 1)
    relays(sessions, bus)
    wait_for(lambda: sent_count(sessions) == 5, what="every row settled")
    assert str(launch) not in [e for _, e in delivered(bus)]
    assert len(delivered(bus)) == 4
    assert any("is not published" in r.getMessage() for r in caplog.records)


def test_metadata_events_also_go_to_publish_metadata_to_whatever_the_workflows_level(sessions, bus, relays):
    wf = submit(sessions, eventLevel="ERROR", publishMetadataTo="/queue/meta.alice")
    add_events(sessions, wf, 1, EventType.NODE_OUTPUT, properties={"name": "x", "value": 1})
    add_events(sessions, wf, 1)  # NODE_STATE: STATUS, above ERROR, not metadata: goes nowhere
    relays(sessions, bus)
    wait_for(lambda: sent_count(sessions) == 2, what="the metadata rows published")
    assert [(d, m) for d, m in ((m.destination, m.headers["eventType"]) for m in bus.messages)] == [
        ("/queue/meta.alice", "WORKFLOW_SUBMITTED"), ("/queue/meta.alice", "NODE_OUTPUT")]


# ------------------------------------------------------------------------------------------ start, stop

def test_stopping_publishes_what_is_left_before_leaving(sessions, bus, relays):
    wf = submit(sessions)
    relay = relays(sessions, bus, poll_interval=3600.0)
    wait_for(lambda: sent_count(sessions) == 2, what="the first round")
    add_events(sessions, wf, 10)  # no wake-up: only the stop's drain can publish these
    relay.stop()
    assert sent_count(sessions) == 22
    assert delivered(bus) == expected(sessions)


def test_stopping_does_not_wait_for_a_bus_that_is_down(sessions, bus, relays):
    bus.set_down(True)
    submit(sessions)
    relay = relays(sessions, bus, stop_timeout=30.0, reconnect_initial=5.0, reconnect_max=5.0)
    wait_for(lambda: relay.ref.proxy().failures.get() >= 1, what="a failed connection")
    started = time.monotonic()
    relay.stop()
    assert time.monotonic() - started < 5.0
    assert sent_count(sessions) == 0


def test_an_empty_url_means_no_relay_and_an_unknown_scheme_is_a_config_error(sessions):
    assert OutboxRelay.from_settings(EventsSettings(url=""), sessions) is None
    with pytest.raises(ConfigError, match="unsupported bus URL 'amqp://host'"):
        OutboxRelay.from_settings(EventsSettings(url="amqp://host"), sessions)
    with pytest.raises(ConfigError, match="window: must be at least 1"):
        OutboxRelay.from_settings(EventsSettings(url="memory://x", window=0), sessions)


def test_backoff_doubles_from_the_first_delay_up_to_the_cap_with_at_most_a_fifth_more_jitter():
    assert [backoff_delay(n, 0.5, 4.0) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(2, 0.5, 4.0, rand=1.0) == pytest.approx(1.2)
    assert backoff_delay(10_000, 0.5, 30.0) == 30.0


def test_service_level_events_go_to_the_admin_topic_with_empty_workflow_headers(sessions, bus, relays):
    with sessions.begin() as s:
        repository.add_event(s, None, type=EventType.SERVICE, actor="broker", message="broker started",
                             time=dt.datetime.now(dt.timezone.utc))
    relays(sessions, bus)
    wait_for(lambda: sent_count(sessions) == 1, what="the service event published")
    (message,) = bus.messages
    assert message.destination == ALL_EVENTS_TOPIC
    assert (message.headers["workflowId"], message.headers["seq"], message.headers["user"]) == ("", "", "")
    assert document.parse(message.body).message == "broker started"


def test_each_user_topic_carries_only_that_users_events(sessions, bus, relays):
    alice, bob = submit(sessions, "alice"), submit(sessions, "bob")
    relays(sessions, bus)
    wait_for(lambda: sent_count(sessions) == 4, what="both submissions published")
    by_topic = {}
    for message in bus.messages:
        by_topic.setdefault(message.destination, []).append(message.headers["workflowId"])
    assert by_topic == {ALL_EVENTS_TOPIC: [alice.global_id, bob.global_id],
                        user_topic("alice"): [alice.global_id], user_topic("bob"): [bob.global_id]}


def test_the_memory_bus_keeps_its_last_messages_and_counts_them_all(monkeypatch):
    from broker.events import publishers
    from broker.events.publishers import Message, MemoryPublisher

    monkeypatch.setattr(publishers, "MEMORY_BUS_KEEP", 3)
    bus = MemoryBus(f"test-{uuid.uuid4().hex}")
    publisher = MemoryPublisher(bus)
    publisher.connect(1.0)
    publisher.begin("t1")
    for i in range(5):
        publisher.send(Message("/topic/x", {"i": str(i)}, b"body"), "t1")
    publisher.commit("t1", "r1")
    assert publisher.wait(["r1"], 1.0).confirmed("r1")
    assert [m.headers["i"] for m in bus.messages] == ["2", "3", "4"]
    assert bus.delivered == 5 and bus.wait_for(5, 0.0) and not bus.wait_for(6, 0.0)
