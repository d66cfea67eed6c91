"""The ActiveMQ authorization snippet of the README, on a real ActiveMQ started here with exactly that file.

It keeps each user to their own topic and the all-events topic to admins, lets the relay (login
``broker``) publish everywhere, and refuses anonymous clients. A relay logged in without write rights
has every message refused: the relay's rejection path on a real bus.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import stomp
from sqlalchemy import select

from broker.config import EventsSettings
from broker.configload import load_settings
from broker.description.load import load_description
from broker.events.buses import open_publisher
from broker.events.publishers import BusError
from broker.events.relay import OutboxRelay
from broker.events.routing import ALL_EVENTS_TOPIC, user_topic
from broker.persistence import repository
from broker.persistence.models import Outbox
from tests.engine.helpers import workflow
from tests.events.helpers import FAST, StompConsumer, has_sentinel, without_sentinel
from tests.fixtures import DEADLINE, wait_for
from tests.fixtures.services import port_open

SNIPPET = Path(__file__).with_name("activemq-authorization.xml")
HOME = Path("/usr/share/activemq")
PASSWORDS = {"broker": "relay-secret", "admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def secured(activemq, tmp_path_factory):
    """A second, non-persistent ActiveMQ whose <broker> holds the README's <plugins>: its STOMP URL."""
    base = tmp_path_factory.mktemp("secured-activemq")
    (base / "conf").mkdir()
    (base / "data").mkdir()
    port = free_port()
    plugins = SNIPPET.read_text().split("-->", 1)[1]
    (base / "conf" / "activemq.xml").write_text(f"""<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="secured" useJmx="false" schedulerSupport="false"
          persistent="false" dataDirectory="{base}/data">
    {plugins}
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{port}"/>
    </transportConnectors>
  </broker>
</beans>
""")
    log = open(base / "broker.out", "w")
    proc = subprocess.Popen(
        ["java", "-Xms64M", "-Xmx256M", "-XX:+UseSerialGC", "-Djava.awt.headless=true",
         f"-Djava.io.tmpdir={base}/data",
         f"-Dactivemq.classpath={base}/conf", f"-Dactivemq.home={HOME}", f"-Dactivemq.base={base}",
         f"-Dactivemq.conf={base}/conf", f"-Dactivemq.data={base}/data", "-jar", str(HOME / "bin" / "activemq.jar"),
         "start", f"xbean:file:{base}/conf/activemq.xml"], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, what="the secured ActiveMQ")
        assert proc.poll() is None, (base / "broker.out").read_text()[-3000:]
        yield f"stomp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=DEADLINE)
        log.close()


def consumer(url: str, destination: str, user: str) -> StompConsumer:
    return StompConsumer(url, destination, login=user, passcode=PASSWORDS[user]).start()


def refused_subscription(url: str, destination: str, user: str) -> str:
    """The ERROR message the bus answers a subscription with (fails the test when it accepts it)."""
    error = threading.Event()
    answer: list[str] = []

    class Listener(stomp.ConnectionListener):
        def on_error(self, frame):
            answer.append(frame.headers.get("message", frame.body))
            error.set()

        def on_receipt(self, frame):
            error.set()

    host, port = url.rpartition("/")[2].split(":")
    conn = stomp.Connection12([(host, int(port))])
    conn.set_listener("l", Listener())
    conn.connect(user, PASSWORDS[user], wait=True)
    conn.subscribe(destination, id="1", headers={"receipt": "sub"})
    assert error.wait(DEADLINE), "no answer to the subscription"
    try:
        conn.disconnect()
    except Exception:
        pass
    assert answer, f"{user} was allowed to subscribe to {destination}"
    return answer[0]


def store_workflow(sessions, owner: str) -> None:
    doc = workflow('<node id="a"><payload type="sh">true</payload></node>')
    spec = load_description(doc, load_settings(environ={}), filename="t.xml")
    with sessions.begin() as s:
        repository.submit_workflow(s, spec, descriptor=doc.decode(), owner=repository.ensure_user(s, owner))


def unsent(sessions) -> int:
    with sessions() as s:
        return len(s.execute(select(Outbox.id).where(Outbox.sent_at.is_(None))).all())


def run_relay(url: str, sessions, login: str, until, what: str, **events) -> OutboxRelay:
    """Run a relay logged in as ``login`` until ``until(relay)`` holds."""
    settings = EventsSettings(url=url, login=login, passcode=PASSWORDS[login], **{**FAST, **events})
    relay = OutboxRelay.from_settings(settings, sessions).start()
    try:
        wait_for(lambda: until(relay), what=what)
    finally:
        relay.stop()
    return relay


def publish_events(url: str, sessions, owner: str) -> None:
    """Store a workflow of ``owner`` and publish its events as the relay's account ``broker``."""
    store_workflow(sessions, owner)
    run_relay(url, sessions, "broker", lambda _: unsent(sessions) == 0, "every outbox row published")


@pytest.mark.slow
def test_each_user_reads_only_their_own_topic_and_admins_read_everything(secured, sessions):
    alice = consumer(secured, user_topic("alice"), "alice")
    admin_all = consumer(secured, ALL_EVENTS_TOPIC, "admin")
    admin_bob = consumer(secured, user_topic("bob"), "admin")
    try:
        publish_events(secured, sessions, "alice")
        publish_events(secured, sessions, "bob")
        for c, topic in ((alice, user_topic("alice")), (admin_all, ALL_EVENTS_TOPIC), (admin_bob, user_topic("bob"))):
            send_sentinel_as(secured, topic)
            c.wait(has_sentinel, f"the sentinel on {topic}")
    finally:
        for c in (alice, admin_all, admin_bob):
            c.disconnect()
    assert {m.headers["user"] for m in without_sentinel(alice.messages)} == {"alice"}
    assert {m.headers["user"] for m in without_sentinel(admin_all.messages)} == {"alice", "bob"}
    assert {m.headers["user"] for m in without_sentinel(admin_bob.messages)} == {"bob"}
    assert "not authorized to read" in refused_subscription(secured, user_topic("bob"), "alice")
    assert "not authorized to read" in refused_subscription(secured, ALL_EVENTS_TOPIC, "alice")


def send_sentinel_as(url: str, topic: str) -> None:
    host, port = url.rpartition("/")[2].split(":")
    conn = stomp.Connection12([(host, int(port))], auto_content_length=False)
    got = threading.Event()

    class Receipt(stomp.ConnectionListener):
        def on_receipt(self, frame):
            got.set()

    conn.set_listener("r", Receipt())
    conn.connect("broker", PASSWORDS["broker"], wait=True)
    conn.send(topic, "end", headers={"eventType": "TEST_END", "receipt": "end"})
    assert got.wait(DEADLINE)
    conn.disconnect()


@pytest.mark.slow
def test_a_wrong_passcode_or_no_login_is_a_clear_bus_error(secured):
    for login, passcode in (("broker", "wrong"), ("", "")):
        publisher = open_publisher(EventsSettings(url=secured, login=login, passcode=passcode))
        with pytest.raises(BusError, match="cannot connect .*ERROR"):
            publisher.connect(10.0)
        assert not publisher.connected()


@pytest.mark.slow
def test_a_relay_account_that_may_not_write_the_broker_topics_keeps_every_event_waiting(secured, sessions, caplog):
    watcher = consumer(secured, user_topic("alice"), "admin")
    store_workflow(sessions, "alice")
    try:
        # alice's account may not write anywhere: every message of this relay is refused, and retried
        run_relay(secured, sessions, "alice", lambda relay: relay.ref.proxy().failures.get() >= 4,
                  "several refused rounds", max_rejections=1)
    finally:
        watcher.disconnect()
    assert watcher.messages == []
    assert unsent(sessions) == 2, "nothing is skipped on the broker's own topics, whatever max_rejections"
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    # the reason quoted is the bus's ERROR for the SEND, or for the COMMIT when that one came first
    assert any("for /topic/broker.events (" in m and "must be allowed to write" in m for m in refusals), refusals
