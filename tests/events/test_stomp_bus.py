"""Events of real workflow runs on real buses (ActiveMQ and RabbitMQ over STOMP), read by Python consumers."""

from __future__ import annotations

import time

import pytest

from broker.config import EventsSettings
from broker.events import document
from broker.events.buses import open_publisher
from broker.events.publishers import BusError, Message
from broker.events.routing import ALL_EVENTS_TOPIC, user_topic
from broker.events.types import METADATA, EventLevel, EventType
from broker.states import WorkflowState
from tests.events.helpers import (StompConsumer, all_sent, bus_broker, has_sentinel, published_rows, send_sentinel,
                                  sweep_document, unique_user, without_sentinel)
from tests.fixtures import wait_for


@pytest.fixture(params=["activemq", "rabbitmq"])
def bus(request):
    """(STOMP URL, vhost) of each real bus."""
    if request.param == "activemq":
        return request.getfixturevalue("activemq").stomp_url, None
    node = request.getfixturevalue("rabbitmq")
    return node.stomp_url, node.vhost


def check_documents(messages, destination):
    """Every body validates against event.xsd, and the headers say what the body says."""
    for message in messages:
        assert document.validation_errors(message.body.encode()) == [], message.body
        event = document.parse(message.body)
        assert message.headers["eventId"] == str(event.event_id)
        assert message.headers["seq"] == str(event.seq)
        assert message.headers["workflowId"] == event.workflow_id
        assert message.headers["nodeId"] == (event.node_id or "")
        assert message.headers["eventType"] == event.type.value
        assert message.headers["level"] == event.level.name
        assert message.headers["user"] == event.user
        assert message.destination == destination


def test_a_python_consumer_gets_every_event_of_a_workflow_run_in_order_each_valid(bus, migrated_url, tmp_path):
    stomp_url, vhost = bus
    user = unique_user()
    topic = user_topic(user)
    consumer = StompConsumer(stomp_url, topic, vhost=vhost).start()
    broker = bus_broker(migrated_url, tmp_path, stomp_url, vhost=vhost or "").start()
    try:
        wf, state = broker.run(sweep_document(eventLevel="PROGRESS"), owner=user)
        assert state is WorkflowState.SUCCEEDED
        wait_for(lambda: all_sent(broker.sessions, wf), what="every outbox row marked sent")
        send_sentinel(stomp_url, topic, vhost)
        consumer.wait(has_sentinel, "the sentinel after the workflow's events")
        rows = published_rows(broker.sessions, topic, wf)
    finally:
        broker.stop()
        consumer.disconnect()
    got = without_sentinel(consumer.messages)
    assert [m.event_id for m in got] == [str(event_id) for event_id, _, _ in rows]
    assert len(got) == len(rows) and all(sent for _, _, sent in rows)
    seqs = [m.seq for m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    check_documents(got, topic)
    types = {m.headers["eventType"] for m in got}
    assert {"WORKFLOW_SUBMITTED", "NODE_EXPANDED", "NODE_OUTPUT", "NODE_PROGRESS", "WORKFLOW_STATE"} <= types
    assert "NODE_LAUNCH" not in types  # DEBUG, above PROGRESS


def test_a_debug_and_a_status_workflow_publish_what_their_level_allows_and_nothing_more(activemq, migrated_url,
                                                                                       tmp_path):
    loud, quiet = unique_user(), unique_user()
    consumers = {u: StompConsumer(activemq.stomp_url, user_topic(u)).start() for u in (loud, quiet)}
    broker = bus_broker(migrated_url, tmp_path, activemq.stomp_url).start()
    try:
        runs = {loud: broker.submit(sweep_document(eventLevel="DEBUG"), owner=loud),
                quiet: broker.submit(sweep_document(eventLevel="STATUS", publishMetadataTo=f"/queue/meta.{quiet}"),
                                     owner=quiet)}
        for wf in runs.values():
            assert broker.wait(wf) is WorkflowState.SUCCEEDED
            wait_for(lambda: all_sent(broker.sessions, wf), what="every outbox row marked sent")
        for user, consumer in consumers.items():
            send_sentinel(activemq.stomp_url, user_topic(user))
            consumer.wait(has_sentinel, f"the sentinel on {user}'s topic")
        history = {user: broker.events(wf) for user, wf in runs.items()}
    finally:
        broker.stop()
        for consumer in consumers.values():
            consumer.disconnect()
    for user, level in ((loud, EventLevel.DEBUG), (quiet, EventLevel.STATUS)):
        got = [m.event_id for m in without_sentinel(consumers[user].messages)]
        allowed = [str(e.id) for e in history[user] if e.level <= level]
        assert got == allowed, f"{level.name} workflow"
    quiet_types = {m.headers["eventType"] for m in without_sentinel(consumers[quiet].messages)}
    loud_types = {m.headers["eventType"] for m in without_sentinel(consumers[loud].messages)}
    assert {"NODE_LAUNCH", "NODE_PROGRESS"} <= loud_types
    assert not {"NODE_LAUNCH", "NODE_PROGRESS"} & quiet_types
    # the history keeps everything whatever the level
    assert {"NODE_LAUNCH", "NODE_PROGRESS"} <= {e.type for e in history[quiet]}
    # publishMetadataTo: a queue keeps the metadata events for a consumer that comes later
    meta = StompConsumer(activemq.stomp_url, f"/queue/meta.{quiet}").start()
    try:
        wanted = [str(e.id) for e in history[quiet] if EventType(e.type) in METADATA]
        meta.wait(lambda ms: len(ms) >= len(wanted), "the metadata events on the queue")
        assert [m.event_id for m in meta.messages] == wanted
        check_documents(meta.messages, f"/queue/meta.{quiet}")
    finally:
        meta.disconnect()


def test_the_all_events_topic_carries_every_users_events(activemq, migrated_url, tmp_path):
    users = [unique_user(), unique_user()]
    consumer = StompConsumer(activemq.stomp_url, ALL_EVENTS_TOPIC,
                             selector=" OR ".join(f"user = '{u}'" for u in users)).start()
    broker = bus_broker(migrated_url, tmp_path, activemq.stomp_url).start()
    try:
        runs = [broker.submit(sweep_document(), owner=u) for u in users]
        for wf in runs:
            assert broker.wait(wf) is WorkflowState.SUCCEEDED
            wait_for(lambda: all_sent(broker.sessions, wf), what="every outbox row marked sent")
        send_sentinel(activemq.stomp_url, ALL_EVENTS_TOPIC, user=users[0])
        consumer.wait(has_sentinel, "the sentinel")
        rows = {wf: published_rows(broker.sessions, ALL_EVENTS_TOPIC, wf) for wf in runs}
    finally:
        broker.stop()
        consumer.disconnect()
    got = without_sentinel(consumer.messages)
    assert {m.headers["user"] for m in got} == set(users)
    for wf, user in zip(runs, users):
        mine = [m.seq for m in got if m.headers["user"] == user]
        assert mine == [seq for _, seq, _ in rows[wf]]


def test_a_bus_that_refuses_connections_is_a_bus_error_at_once_not_a_hang():
    publisher = open_publisher(EventsSettings(url="stomp://127.0.0.1:1"))
    started = time.monotonic()
    with pytest.raises(BusError, match="cannot connect to 127.0.0.1:1: connection refused"):
        publisher.connect(5.0)
    assert time.monotonic() - started < 2.0
    assert not publisher.connected()


@pytest.mark.parametrize("bus_name", ["activemq", "rabbitmq"])
def test_a_committed_window_is_confirmed_by_its_receipts_and_delivered_at_commit(bus_name, request):
    if bus_name == "activemq":
        url, vhost = request.getfixturevalue("activemq").stomp_url, None
    else:
        node = request.getfixturevalue("rabbitmq")
        url, vhost = node.stomp_url, node.vhost
    queue = f"/queue/broker.test.{unique_user()}"
    publisher = open_publisher(EventsSettings(url=url, vhost=vhost or ""))
    publisher.connect(5.0)
    try:
        publisher.begin("w1")
        for i in range(3):
            publisher.send(Message(queue, {"persistent": "true", "n": str(i)}, b"<x/>"), "w1")
        publisher.commit("w1", "c1")
        answer = publisher.wait(["c1"], 10.0)
        assert answer.confirmed("c1") and answer.errors == () and answer.failure is None
        # a window flushed ahead of its COMMIT (the relay's next window while it marks the last) is delivered too
        publisher.begin("w2")
        publisher.send(Message(queue, {"persistent": "true", "n": "3"}, b"<x/>"), "w2")
        publisher.flush("w2")
        publisher.commit("w2", "c2")
        assert publisher.wait(["c2"], 10.0).confirmed("c2")
        # a window flushed but never committed, or left open, is never delivered: the bus drops it with the
        # connection (the relay's staged window when its mark fails or it dies)
        publisher.begin("w3")
        publisher.send(Message(queue, {"persistent": "true", "n": "lost, flushed"}, b"<x/>"), "w3")
        publisher.flush("w3")
        publisher.begin("w4")
        publisher.send(Message(queue, {"persistent": "true", "n": "lost"}, b"<x/>"), "w4")
    finally:
        publisher.close()
    drain = StompConsumer(url, queue, vhost=vhost).start()
    try:
        drain.wait(lambda ms: len(ms) >= 4, "the four committed messages")
        send_sentinel(url, queue, vhost)
        drain.wait(has_sentinel, "the sentinel")
    finally:
        drain.disconnect()
    assert [m.headers["n"] for m in without_sentinel(drain.messages)] == ["0", "1", "2", "3"]


def test_an_empty_destination_makes_activemq_drop_the_connection_and_the_window_stays_unconfirmed(activemq):
    publisher = open_publisher(EventsSettings(url=activemq.stomp_url))
    publisher.connect(5.0)
    try:
        publisher.begin("w1")
        publisher.send(Message("", {"persistent": "true"}, b"<x/>"), "w1")
        try:
            publisher.commit("w1", "c1")
        except BusError:
            pass  # the connection may already be gone
        answer = publisher.wait(["c1"], 10.0)
        assert not answer.confirmed("c1") and answer.failure
        assert not publisher.connected()
    finally:
        publisher.close()


def test_a_bus_that_goes_silent_is_noticed_by_heart_beats_and_the_connection_dropped():
    """A fake bus accepts the connection, agrees on 0.3 s heart-beats, then never sends a byte again."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        held.append(conn)
        data = b""
        while b"\x00" not in data:
            data += conn.recv(4096)
        conn.sendall(b"CONNECTED\nversion:1.2\nheart-beat:300,300\n\n\x00")

    thread = threading.Thread(target=serve)
    thread.start()
    publisher = open_publisher(EventsSettings(url=f"stomp://127.0.0.1:{port}", heartbeat=0.3))
    try:
        publisher.connect(5.0)
        assert publisher.connected()
        started = time.monotonic()
        answer = publisher.wait(["never"], 10.0)
        # the fake bus never closes its side: only the missing heart-beats can have ended the connection
        assert answer.failure in ("no heart-beat from the bus", "the bus closed the connection")
        assert time.monotonic() - started < 5.0
        assert not publisher.connected()
    finally:
        publisher.close()
        thread.join(timeout=10)
        for conn in held:
            conn.close()
        server.close()
