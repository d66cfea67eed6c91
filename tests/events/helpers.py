"""Helpers for the event tests: a recording STOMP consumer, engines with a bus, workflows, database reads."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import stomp
from sqlalchemy import select

from broker.persistence.models import Event, Outbox, Workflow
from tests.engine.helpers import Broker
from tests.fixtures import DEADLINE, wait_for

REPO = Path(__file__).resolve().parents[2]
OUTPUT_SWEEP = (REPO / "conf" / "examples" / "output-sweep.xml").read_text()

#: relay settings for tests: quick reconnects and short waits, so fault tests take seconds
FAST = {"reconnect_initial": 0.05, "reconnect_max": 0.5, "receipt_timeout": 5.0, "connect_timeout": 5.0,
        "heartbeat": 2.0, "poll_interval": 0.2, "stop_timeout": 10.0}


def unique_user() -> str:
    """A user name nobody else uses, so its topic /topic/broker.user.<name> carries only this test's events."""
    return "t" + uuid.uuid4().hex[:12]


def sweep_document(**attrs: str) -> bytes:
    """The output-sweep example (progress, outputs, an expansion, 6 nodes) with extra workflow attributes."""
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return OUTPUT_SWEEP.replace('name="output-sweep"', f'name="output-sweep"{extra}', 1).encode()


def bus_broker(url: str, tmp: Path, events_url: str, **events: Any) -> Broker:
    """An engine (not started) whose relay publishes to ``events_url``."""
    broker = Broker(url, tmp)
    broker.settings = broker.settings.replace("events", url=events_url, **{**FAST, **events})
    return broker


@dataclass(frozen=True)
class Received:
    """One message a consumer got."""

    destination: str
    headers: dict[str, str]
    body: str

    @property
    def event_id(self) -> str:
        return self.headers.get("eventId", "")

    @property
    def seq(self) -> int:
        return int(self.headers["seq"])


class StompConsumer:
    """Subscribes to one destination and records every message in arrival order.

    ``durable``: an ActiveMQ durable topic subscription (STOMP ``client-id`` + ``activemq.subscriptionName``),
    which the bus keeps, with the persistent messages published meanwhile, while the consumer is away or
    the bus restarts. Messages are acknowledged one by one after they are recorded.
    """

    def __init__(self, stomp_url: str, destination: str, *, vhost: str | None = None, login: str | None = None,
                 passcode: str | None = None, durable: str | None = None, selector: str | None = None):
        host, port = stomp_url.rpartition("/")[2].split(":")
        self.hosts = [(host, int(port))]
        self.destination = destination
        self.vhost, self.login, self.passcode = vhost, login, passcode
        self.durable = durable
        self.selector = selector
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._conn: Any = None
        self._subscribed = threading.Event()

    # stomp.py listener callbacks
    def on_message(self, frame: Any) -> None:
        with self._cond:
            self.messages.append(Received(frame.headers.get("destination", ""), dict(frame.headers), frame.body))
            self._cond.notify_all()
        if self.durable:
            self._conn.ack(frame.headers["ack"])

    def on_receipt(self, frame: Any) -> None:
        if frame.headers.get("receipt-id") == "subscribed":
            self._subscribed.set()

    def start(self) -> StompConsumer:
        """Connect and subscribe; returns once the bus confirmed the subscription."""
        self._subscribed.clear()
        conn = stomp.Connection12(self.hosts, vhost=self.vhost, heartbeats=(0, 0), reconnect_attempts_max=1)
        conn.set_listener("consumer", self)
        headers = {"client-id": self.durable} if self.durable else {}
        conn.connect(self.login, self.passcode, wait=True, headers=headers)
        sub: dict[str, str] = {"receipt": "subscribed"}
        if self.durable:
            sub["activemq.subscriptionName"] = self.durable
        if self.selector:
            sub["selector"] = self.selector
        conn.subscribe(self.destination, id="1", ack="client-individual" if self.durable else "auto", headers=sub)
        self._conn = conn
        if not self._subscribed.wait(DEADLINE):
            pytest.fail(f"no receipt for the subscription to {self.destination}")
        return self

    def reconnect(self, deadline: float = DEADLINE) -> None:
        """Connect again (after the bus restarted), trying until ``deadline`` s have passed."""
        self.disconnect()

        def connected() -> bool:
            try:
                self.start()
            except stomp.exception.ConnectFailedException:
                return False
            return True

        wait_for(connected, deadline=deadline, interval=0.1, what=f"the bus to accept {self.destination}'s consumer")

    def wait(self, condition: Callable[[list[Received]], Any], what: str, deadline: float = DEADLINE) -> Any:
        """Wait until ``condition(messages)`` holds; fail the test after ``deadline`` s."""
        end = time.monotonic() + deadline
        with self._cond:
            while not (result := condition(self.messages)):
                left = end - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out after {deadline} s waiting for {what}; got {len(self.messages)} "
                                f"messages")
                self._cond.wait(min(left, 0.5))
            return result

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass

    def unsubscribe(self) -> None:
        """Remove a durable subscription (so the bus stops keeping messages for it)."""
        if self._conn is not None and self.durable:
            self._conn.unsubscribe(id="1", headers={"activemq.subscriptionName": self.durable})
        self.disconnect()


def send_sentinel(stomp_url: str, destination: str, vhost: str | None = None, **headers: str) -> None:
    """Publish a marker after everything else: a consumer that got it has got every earlier message."""
    host, port = stomp_url.rpartition("/")[2].split(":")
    conn = stomp.Connection12([(host, int(port))], vhost=vhost, auto_content_length=False)
    got = threading.Event()

    class _Receipt(stomp.ConnectionListener):
        def on_receipt(self, frame: Any) -> None:
            got.set()

    conn.set_listener("r", _Receipt())
    conn.connect(wait=True)
    conn.send(destination, "end", headers={"eventType": "TEST_END", "receipt": "end", **headers})
    assert got.wait(DEADLINE), "no receipt for the sentinel"
    conn.disconnect()


# --------------------------------------------------------------------------------------------- reads

def published_rows(sessions: Any, destination: str, workflow_id: int | None = None) -> list[tuple[int, int, bool]]:
    """(event id, seq, sent) of the outbox rows of a destination, in publishing (outbox id) order."""
    query = (select(Event.id, Event.seq, Outbox.sent_at).join(Outbox, Outbox.event_id == Event.id)
             .where(Outbox.destination == destination).order_by(Outbox.id))
    if workflow_id is not None:
        query = query.where(Event.workflow_id == workflow_id)
    with sessions() as s:
        return [(r.id, r.seq, r.sent_at is not None) for r in s.execute(query)]


def all_sent(sessions: Any, workflow_id: int | None = None) -> bool:
    """Whether every outbox row (of one workflow) is marked sent."""
    query = select(Outbox.id).where(Outbox.sent_at.is_(None))
    if workflow_id is not None:
        query = query.join(Event, Event.id == Outbox.event_id).where(Event.workflow_id == workflow_id)
    with sessions() as s:
        return s.execute(query.limit(1)).first() is None


@contextlib.contextmanager
def reading(url: str) -> Iterator[Any]:
    """A session factory on the database at ``url`` (for reads after the engine stopped)."""
    from broker.persistence.db import make_engine, session_factory

    eng = make_engine(url)
    try:
        yield session_factory(eng)
    finally:
        eng.dispose()


def global_id(sessions: Any, workflow_id: int) -> str:
    with sessions() as s:
        return s.scalar(select(Workflow.global_id).where(Workflow.id == workflow_id))


def without_sentinel(messages: list[Received]) -> list[Received]:
    return [m for m in messages if m.headers.get("eventType") != "TEST_END"]


def has_sentinel(messages: list[Received]) -> bool:
    return any(m.headers.get("eventType") == "TEST_END" for m in messages)
