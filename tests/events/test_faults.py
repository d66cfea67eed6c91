"""Faults on the way to the bus lose no event: a durable consumer gets every seq 1..N at least once.

Durability on the consumer side is an ActiveMQ durable topic subscription made over STOMP (``client-id``
on CONNECT, ``activemq.subscriptionName`` on SUBSCRIBE) to the user's topic: the bus stores the persistent
messages published while the consumer is away or the bus restarts (KahaDB). Workflows run at eventLevel
DEBUG, so every event of the history is published and the seqs on the topic have no gaps.

Faults: ActiveMQ killed mid-workflow and restarted later; the broker process killed with a backlog in the
outbox and restarted; the relay killed between a window's receipts and its mark (crash point
``relay-published``). A repeat of an event must carry the same eventId and the same body.
"""

from __future__ import annotations

import shutil
import signal
import socket
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from broker.events.routing import user_topic
from broker.states import WorkflowState
from tests.cli.helpers import Cli
from tests.engine.helpers import workflow
from tests.events.helpers import (FAST, StompConsumer, all_sent, bus_broker, has_sentinel, send_sentinel, unique_user,
                                  without_sentinel)
from tests.fixtures import DEADLINE, wait_for


def gated(tmp: Path) -> bytes:
    """first -> slow (runs until tmp/gate exists, bounded) -> x, y -> z; every event published (DEBUG)."""
    gate = (f'i=0; while [ ! -e "{tmp}/gate" ] &amp;&amp; [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; '
            f'test -e "{tmp}/gate"')
    return workflow(f"""
      <node id="first"><payload type="sh">echo '@broker progress 50 "half way"'</payload></node>
      <node id="slow"><dependsOn node="first"/><payload type="sh">{gate}</payload></node>
      <node id="x"><dependsOn node="slow"/><payload type="sh">echo '@broker output n=1'</payload>
        <output name="n"/></node>
      <node id="y"><dependsOn node="slow"/><payload type="sh">true</payload></node>
      <node id="z"><dependsOn node="x"/><dependsOn node="y"/><payload type="sh">true</payload></node>""",
                    name="gated", eventLevel="DEBUG")


@pytest.fixture
def durable(activemq):
    """Make durable consumers of a user topic; each is unsubscribed at the end (the bus stops keeping messages)."""
    made: list[StompConsumer] = []

    def make(user: str) -> StompConsumer:
        name = f"test-{uuid.uuid4().hex[:12]}"
        consumer = StompConsumer(activemq.stomp_url, user_topic(user), durable=name).start()
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        try:
            if not consumer._conn:
                consumer.start()
            consumer.unsubscribe()
        except Exception:
            pass


@pytest.fixture
def cli(sqlite_template: Path, tmp_path: Path):
    """The `broker` command on a migrated SQLite file, with the relay's test timings."""
    shutil.copyfile(sqlite_template, tmp_path / "broker.db")
    runner = Cli(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path)
    runner.env.update({f"BROKER_EVENTS_{key.upper()}": str(value) for key, value in FAST.items()})
    yield runner
    runner.close()


def check_every_seq_once_or_repeated_identically(consumer: StompConsumer, last_seq: int) -> dict[str, int]:
    """Every seq 1..last_seq arrived; repeats have the same eventId and body. Returns eventId -> copies."""
    got = without_sentinel(consumer.messages)
    assert {m.seq for m in got} == set(range(1, last_seq + 1))
    by_seq: dict[int, set[tuple[str, str]]] = defaultdict(set)
    copies: dict[str, int] = defaultdict(int)
    for m in got:
        by_seq[m.seq].add((m.event_id, m.body))
        copies[m.event_id] += 1
    repeats_differ = {seq: variants for seq, variants in by_seq.items() if len(variants) > 1}
    assert not repeats_differ, f"repeated events differ: {repeats_differ}"
    return copies


def last_seq_of(sessions, workflow_id: int | None = None) -> int:
    from sqlalchemy import func, select

    from broker.persistence.models import Event

    query = select(func.max(Event.seq))
    if workflow_id is not None:
        query = query.where(Event.workflow_id == workflow_id)
    with sessions() as s:
        return s.scalar(query)


def unsent_count(sessions) -> int:
    from broker.events.relay import count_unsent

    with sessions() as s:
        return count_unsent(s)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- faults

@pytest.mark.slow
def test_activemq_killed_mid_workflow_and_restarted_later_loses_no_event(restartable_activemq, durable,
                                                                        migrated_url, tmp_path):
    bus = restartable_activemq
    user = unique_user()
    consumer = durable(user)
    broker = bus_broker(migrated_url, tmp_path, bus.stomp_url).start()
    try:
        wf = broker.submit(gated(tmp_path), owner=user)
        wait_for(lambda: broker.node_states(wf).get("slow") == "running", what="the gated node to run")
        consumer.wait(lambda ms: len(ms) >= 3, "the first events on the bus")
        bus.kill()
        (tmp_path / "gate").touch()
        assert broker.wait(wf) is WorkflowState.SUCCEEDED  # the engine never waits for the bus
        assert unsent_count(broker.sessions) > 0, "events accumulated in the outbox while the bus was down"
        bus.start()
        consumer.reconnect()
        wait_for(lambda: all_sent(broker.sessions, wf), what="the backlog drained after the restart")
        last = last_seq_of(broker.sessions, wf)
    finally:
        broker.stop()
    send_sentinel(bus.stomp_url, user_topic(user))
    consumer.wait(has_sentinel, "the sentinel after the backlog")
    check_every_seq_once_or_repeated_identically(consumer, last)


@pytest.mark.slow
def test_the_broker_killed_with_a_backlog_publishes_it_after_its_restart(activemq, durable, cli, tmp_path):
    user = unique_user()
    consumer = durable(user)
    cli.env["BROKER_ENGINE_USER"] = user
    doc = cli.file("gated.xml", gated(tmp_path).decode())
    # first broker: its bus refuses connections, so every event stays in the outbox
    cli.env["BROKER_EVENTS_URL"] = f"stomp://127.0.0.1:{closed_port()}"
    first = cli.start("run", str(doc))
    wait_for(lambda: cli.node_state("slow") == "running", what="the gated node to run")
    backlog = unsent_count(cli.sessions)
    assert backlog > 10
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=DEADLINE)
    assert consumer.messages == []
    # second broker: the bus is up; the backlog goes first, then the rest of the run
    (tmp_path / "gate").touch()
    cli.env["BROKER_EVENTS_URL"] = activemq.stomp_url
    (wf,) = cli.workflows()
    done = cli("resume", wf.global_id)
    assert done.returncode == 0, done.stderr
    assert all_sent(cli.sessions), "the resumed broker published everything before it exited"
    send_sentinel(activemq.stomp_url, user_topic(user))
    consumer.wait(has_sentinel, "the sentinel after the run")
    copies = check_every_seq_once_or_repeated_identically(consumer, last_seq_of(cli.sessions, wf.id))
    assert set(copies.values()) == {1}  # nothing had been published before the kill: nothing twice


@pytest.mark.slow
def test_the_relay_killed_between_publishing_and_marking_publishes_that_window_again(activemq, durable, cli,
                                                                                   tmp_path):
    user = unique_user()
    consumer = durable(user)
    cli.env.update({"BROKER_ENGINE_USER": user, "BROKER_EVENTS_URL": activemq.stomp_url})
    doc = cli.file("gated.xml", gated(tmp_path).decode())
    first = subprocess_with_crash(cli, doc)
    assert first.wait(timeout=DEADLINE) == -signal.SIGKILL
    # the bus has the first window; the database does not know it was published
    wait_for(lambda: consumer.messages, what="the window published before the crash")
    assert unsent_count(cli.sessions) > 0 and not all_sent(cli.sessions)
    (tmp_path / "gate").touch()
    (wf,) = cli.workflows()
    done = cli("resume", wf.global_id)
    assert done.returncode == 0, done.stderr
    assert all_sent(cli.sessions)
    send_sentinel(activemq.stomp_url, user_topic(user))
    consumer.wait(has_sentinel, "the sentinel after the run")
    copies = check_every_seq_once_or_repeated_identically(consumer, last_seq_of(cli.sessions, wf.id))
    assert max(copies.values()) == 2, "the window whose mark was lost went out a second time"


def subprocess_with_crash(cli: Cli, doc: Path):
    """`broker run` that kills itself right after its relay's first confirmed window, before marking it."""
    cli.env["BROKER_TEST_CRASH"] = "relay-published:1"
    try:
        return cli.start("run", str(doc))
    finally:
        del cli.env["BROKER_TEST_CRASH"]
