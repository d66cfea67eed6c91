"""A real Java JMS consumer (Debian's ActiveMQ client jars, compiled here with javac) reads the events.

The consumer selects one workflow with ``workflowId = '<global id>'`` on the all-events topic while two
workflows of the same user run at once: it must get exactly that workflow's events, as TextMessages with
string properties, JMSType set and persistent delivery, and none of the other's.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from broker.events import document
from broker.events.routing import ALL_EVENTS_TOPIC
from broker.states import WorkflowState
from tests.engine.helpers import Broker
from tests.events.helpers import (all_sent, bus_broker, global_id, published_rows, reading, send_sentinel,
                                  sweep_document, unique_user)
from tests.fixtures import DEADLINE, require, wait_for

SOURCE = Path(__file__).with_name("JmsEventConsumer.java")


@pytest.fixture(scope="module")
def consumer_classes(activemq, tmp_path_factory) -> tuple[Path, str]:
    """The compiled consumer: (class directory, classpath to run it with)."""
    require(bool(activemq.classpath), "ActiveMQ's JMS client jars (BROKER_TEST_ACTIVEMQ_CLASSPATH)")
    require(shutil.which("javac") is not None, "javac (a JDK)")
    out = tmp_path_factory.mktemp("jms-classes")
    compiled = subprocess.run(["javac", "-d", str(out), "-cp", activemq.classpath, str(SOURCE)],
                              capture_output=True, text=True, timeout=120)
    assert compiled.returncode == 0, compiled.stderr
    return out, f"{out}:{activemq.classpath}"


class JavaConsumer:
    """The Java consumer as a child process; its output lines are collected by a reader thread."""

    def __init__(self, classpath: str, openwire_url: str, topic: str, selector: str):
        self.proc = subprocess.Popen(["java", "-cp", classpath, "JmsEventConsumer", openwire_url, topic, selector,
                                      str(int(DEADLINE * 3))], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="java-consumer-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, text: str) -> None:
        def seen():
            with self._cond:
                return text in self.lines or self.proc.poll() is not None

        wait_for(seen, what=f"the Java consumer to print {text}", deadline=DEADLINE)
        assert text in self.lines, f"the Java consumer exited: {self.proc.stderr.read() if self.proc.stderr else ''}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self._reader.join(timeout=DEADLINE)


def parse_line(line: str) -> dict:
    _, cls, jms_type, mode, props, body = line.split("\t")
    properties = {}
    for item in props.split(","):
        name, java_type, value = item.split(":")
        properties[name] = (java_type, base64.b64decode(value).decode())
    error = body[1:] if body.startswith("!") else None
    return {"class": cls, "type": jms_type, "mode": mode, "properties": properties, "error": error,
            "body": None if body == "-" or error else base64.b64decode(body).decode()}


@pytest.mark.slow
def test_a_jms_consumer_selecting_one_workflow_gets_exactly_its_events_as_text_messages(
        activemq, consumer_classes, migrated_url, tmp_path):
    _, classpath = consumer_classes
    user = unique_user()
    # store both workflows first (no bus, nothing launched), so the selector can name one before it runs
    holding = Broker(migrated_url, tmp_path, max_in_flight=0).start()
    try:
        chosen = holding.submit(sweep_document(eventLevel="DEBUG"), owner=user)
        other = holding.submit(sweep_document(eventLevel="DEBUG"), owner=user)
    finally:
        holding.stop()
    with reading(migrated_url) as sessions:
        chosen_gid, other_gid = global_id(sessions, chosen), global_id(sessions, other)

    java = JavaConsumer(classpath, activemq.openwire_url, ALL_EVENTS_TOPIC.removeprefix("/topic/"),
                        f"workflowId = '{chosen_gid}'")
    try:
        java.wait_line("READY")
        broker = bus_broker(migrated_url, tmp_path, activemq.stomp_url).start()
        try:
            broker.engine.track(chosen)
            broker.engine.track(other)  # both run at once
            assert broker.wait(chosen) is WorkflowState.SUCCEEDED
            assert broker.wait(other) is WorkflowState.SUCCEEDED
            wait_for(lambda: all_sent(broker.sessions), what="every outbox row marked sent")
            expected = [str(e) for e, _, _ in published_rows(broker.sessions, ALL_EVENTS_TOPIC, chosen)]
            others = published_rows(broker.sessions, ALL_EVENTS_TOPIC, other)
        finally:
            broker.stop()
        send_sentinel(activemq.stomp_url, ALL_EVENTS_TOPIC, workflowId=chosen_gid)
        java.wait_line("END")
    finally:
        java.close()

    assert others and all(sent for _, _, sent in others), "the other workflow's events were published too"
    messages = [parse_line(line) for line in java.lines if line.startswith("MSG\t")]
    assert [m["properties"]["eventId"][1] for m in messages] == expected
    for m in messages:
        props = m["properties"]
        assert m["class"] == "ActiveMQTextMessage"
        assert m["mode"] == "PERSISTENT"
        assert m["type"] == props["eventType"][1]
        assert {name: kind for name, (kind, _) in props.items() if name in document.HEADER_NAMES} == dict.fromkeys(
            document.HEADER_NAMES, "String")
        assert props["workflowId"][1] == chosen_gid != other_gid
        assert document.validation_errors(m["body"].encode()) == []
        assert document.parse(m["body"]).workflow_id == chosen_gid
    assert {"NODE_LAUNCH", "NODE_EXPANDED", "WORKFLOW_STATE"} <= {m["type"] for m in messages}



EMOJI = "\U0001F600"
#: an emoji in the workflow's name, a progress message and an output value
EMOJI_WORKFLOW = f"""<workflow xmlns="urn:workflow-broker:workflow:1.0" name="smile {EMOJI}" eventLevel="PROGRESS"
    publishMetadataTo="QUEUE">
  <node id="say">
    <payload type="sh"><![CDATA[
      echo '@broker progress 50 "half way {EMOJI}"'
      echo '@broker output face="{EMOJI}"'
    ]]></payload>
    <output name="face"/>
  </node>
</workflow>
"""


@pytest.mark.slow
def test_characters_outside_the_bmp_reach_java_consumers_as_text_on_topics_and_metadata_queues(
        activemq, consumer_classes, migrated_url, tmp_path):
    # ActiveMQ keeps a 4-byte UTF-8 sequence of a STOMP frame in the JMS TextMessage, and its decoder then
    # refuses it (UTFDataFormatException from getText()): the body carries such characters as references
    _, classpath = consumer_classes
    user = unique_user()
    queue = f"/queue/test.emoji.{user}"
    on_topic = JavaConsumer(classpath, activemq.openwire_url, ALL_EVENTS_TOPIC.removeprefix("/topic/"),
                            f"user = '{user}'")
    on_queue = JavaConsumer(classpath, activemq.openwire_url, "queue://" + queue.removeprefix("/queue/"), "")
    try:
        on_topic.wait_line("READY")
        on_queue.wait_line("READY")
        broker = bus_broker(migrated_url, tmp_path, activemq.stomp_url).start()
        try:
            workflow = broker.submit(EMOJI_WORKFLOW.replace("QUEUE", queue).encode(), owner=user)
            assert broker.wait(workflow) is WorkflowState.SUCCEEDED
            wait_for(lambda: all_sent(broker.sessions), what="every outbox row marked sent")
        finally:
            broker.stop()
        send_sentinel(activemq.stomp_url, ALL_EVENTS_TOPIC, user=user)
        send_sentinel(activemq.stomp_url, queue)
        on_topic.wait_line("END")
        on_queue.wait_line("END")
    finally:
        on_topic.close()
        on_queue.close()

    for java, where in ((on_topic, "topic"), (on_queue, "queue")):
        messages = [parse_line(line) for line in java.lines if line.startswith("MSG\t")]
        assert messages, f"no message on the {where}"
        assert [(m["type"], m["error"]) for m in messages if m["error"]] == [], where
        events = {t: [document.parse(m["body"]) for m in messages if m["type"] == t]
                  for t in {m["type"] for m in messages}}
        assert EMOJI in events["WORKFLOW_SUBMITTED"][0].properties["name"], where
        assert [e.properties["value"] for e in events["NODE_OUTPUT"]] == [EMOJI], where
        if where == "topic":  # progress is not metadata: it goes to the topics only
            assert [e.message for e in events["NODE_PROGRESS"]] == [f"half way {EMOJI}"]
        for m in messages:
            assert EMOJI not in m["body"] and "&#x1F600;" in m["body"] or m["type"] not in (
                "WORKFLOW_SUBMITTED", "NODE_OUTPUT", "NODE_PROGRESS"), m["body"]
