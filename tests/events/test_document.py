"""The event document: valid against schemas/event.xsd, deterministic, safe for XML and STOMP, and its headers."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from lxml import etree

from broker.events import document
from broker.events.document import EventDocument, headers, parse, render, validation_errors
from broker.events.types import EventLevel, EventType
from broker.ids import GLOBAL_ID_RE, USER_NAME_RE, new_workflow_global_id

XS = "{http://www.w3.org/2001/XMLSchema}"
WF = new_workflow_global_id()
WHEN = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)


def node_event(**changes) -> EventDocument:
    event = EventDocument(event_id=42, seq=7, type=EventType.NODE_STATE, level=EventLevel.STATUS, workflow_id=WF,
                          node_id=f"{WF}/sweep[3]/step", user="alice", actor="monitoring", state="running",
                          time=WHEN, message="started on host1", properties={"attempt": 2, "previous": "queued"})
    return dataclasses.replace(event, **changes)


def schema_tree() -> etree._ElementTree:
    from broker.description.schema import schema_dir

    return etree.parse(str(schema_dir() / "event.xsd"))


def enumeration(name: str) -> list[str]:
    tree = schema_tree()
    return tree.xpath(f"//xs:simpleType[@name='{name}']//xs:enumeration/@value", namespaces={"xs": XS[1:-1]})


def pattern(name: str) -> str:
    tree = schema_tree()
    (value,) = tree.xpath(f"//xs:simpleType[@name='{name}']//xs:pattern/@value", namespaces={"xs": XS[1:-1]})
    return value


def test_a_rendered_event_is_valid_against_the_schema_and_parses_back_to_the_same_event():
    event = node_event()
    body = render(event)
    assert validation_errors(body) == []
    assert parse(body) == event
    assert b'xmlns="urn:workflow-broker:event:1.0"' in body


def test_a_service_event_has_no_sequence_workflow_node_or_user_and_is_still_valid():
    event = node_event(seq=None, type=EventType.SERVICE, level=EventLevel.INFO, workflow_id=None, node_id=None,
                       user=None, actor="broker", state=None, message="broker started", properties={})
    body = render(event)
    assert validation_errors(body) == []
    assert parse(body) == event
    assert b"<sequence>" not in body and b"<workflowId>" not in body and b"<properties" not in body


def test_the_same_event_always_renders_to_the_same_bytes_so_a_republished_message_is_identical():
    first = render(node_event(properties={"b": [1, 2], "a": {"y": 1, "x": None}}))
    again = render(node_event(properties={"a": {"x": None, "y": 1}, "b": [1, 2]}))
    assert first == again


def test_properties_are_json_texts_sorted_by_name():
    body = render(node_event(properties={"z": "text", "a": 1.5, "m": [True, None]}))
    root = etree.fromstring(body)
    props = root.findall(f"{{{document.NAMESPACE}}}properties/{{{document.NAMESPACE}}}property")
    assert [(p.get("name"), p.text) for p in props] == [("a", "1.5"), ("m", "[true,null]"), ("z", '"text"')]


def test_a_nan_property_becomes_a_string_so_every_property_stays_valid_json():
    body = render(node_event(properties={"ratio": float("nan")}))
    assert parse(body).properties == {"ratio": "nan"}


def test_characters_xml_cannot_carry_are_replaced_and_the_body_never_contains_nul():
    hostile = "nul\x00 bell\x07 esc\x1b surrogate\ud800 nonchar\uffff ok\u00e9\U0001f600 tab\tnl\n"
    body = render(node_event(message=hostile, properties={"out\x00put": "v\x00"}))
    assert b"\x00" not in body
    assert validation_errors(body) == []
    back = parse(body)
    assert back.message == "nul\ufffd bell\ufffd esc\ufffd surrogate\ufffd nonchar\ufffd ok\u00e9\U0001f600 tab\tnl\n"
    # a property value is JSON: its escapes (\\u0000) carry the value exactly, with no raw NUL in the body
    assert back.properties == {"out\ufffdput": "v\x00"}


def test_characters_outside_the_bmp_are_character_references_and_read_back_as_themselves():
    # ActiveMQ's TextMessage cannot decode 4-byte UTF-8 (tests/interop checks the Java side)
    body = render(node_event(message="face \U0001f600", properties={"v\U0001f4a9": "\U0001f600 \u00e9"}))
    assert b"\xf0" not in body and body.count(b"&#x1F600;") == 2 and b"&#x1F4A9;" in body
    assert "\u00e9".encode() in body  # the rest of Unicode stays UTF-8
    assert validation_errors(body) == []
    back = parse(body)
    assert back.message == "face \U0001f600" and back.properties == {"v\U0001f4a9": "\U0001f600 \u00e9"}


def test_headers_are_strings_under_fixed_names_carrying_the_events_identity():
    event = node_event()
    assert headers(event) == {"workflowId": WF, "user": "alice", "nodeId": f"{WF}/sweep[3]/step",
                              "eventType": "NODE_STATE", "level": "STATUS", "seq": "7", "eventId": "42",
                              "type": "NODE_STATE", "persistent": "true"}
    assert set(document.HEADER_NAMES) <= set(headers(event))


def test_a_service_events_headers_are_empty_strings_where_nothing_applies():
    event = node_event(seq=None, type=EventType.SERVICE, workflow_id=None, node_id=None, user=None)
    values = headers(event)
    assert (values["workflowId"], values["user"], values["nodeId"], values["seq"]) == ("", "", "", "")
    assert all(isinstance(v, str) for v in values.values())


def test_the_schema_lists_exactly_the_event_types_and_levels_of_the_broker():
    assert enumeration("EventType") == [t.value for t in EventType]
    assert enumeration("EventLevel") == [level.name for level in sorted(EventLevel)]


def test_the_schema_patterns_of_ids_and_users_are_the_brokers_own():
    assert pattern("WorkflowId") == GLOBAL_ID_RE.pattern
    assert pattern("UserName") == USER_NAME_RE.pattern.replace("_-", "_\\-")


@pytest.mark.parametrize("mutate, problem", [
    (lambda b: b.replace(b"<level>STATUS</level>", b"<level>LOUD</level>"), "level"),
    (lambda b: b.replace(b"<sequence>7</sequence>", b"<sequence>0</sequence>"), "sequence"),
    (lambda b: b.replace(b"Z</time>", b"</time>"), "time"),
    (lambda b: b.replace(b"<actor>monitoring</actor>", b""), "actor"),
    (lambda b: b"<!DOCTYPE event>" + b.split(b"?>", 1)[1], "DOCTYPE"),
    (lambda b: b[:-10], "well-formed"),
])
def test_a_body_that_breaks_the_contract_is_reported_invalid(mutate, problem):
    body = mutate(render(node_event()))
    errors = validation_errors(body)
    assert errors and problem in " ".join(errors)
    with pytest.raises(ValueError, match="invalid event document"):
        parse(body)


def test_a_naive_time_is_refused_rather_than_published_in_an_unknown_zone():
    with pytest.raises(ValueError, match="naive"):
        render(node_event(time=WHEN.replace(tzinfo=None)))
