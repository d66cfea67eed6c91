"""The event document: valid against schemas/event.xsd, deterministic, safe for XML and STOMP, and its headers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re

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


def lxml_render(doc: EventDocument) -> bytes:
    """The body as the broker built it with lxml until 2026-12-06: the reference the text renderer must match."""
    ns = "{" + document.NAMESPACE + "}"
    root = etree.Element(ns + "event", nsmap={None: document.NAMESPACE})

    def add(name: str, text: str | None) -> None:
        if text is not None:
            etree.SubElement(root, ns + name).text = document.xml_safe(text)

    for name, text in (("id", str(doc.event_id)), ("sequence", None if doc.seq is None else str(doc.seq)),
                       ("type", doc.type.value), ("level", doc.level.name), ("workflowId", doc.workflow_id),
                       ("nodeId", doc.node_id), ("user", doc.user), ("actor", doc.actor), ("state", doc.state),
                       ("time", document.format_time(doc.time)), ("message", doc.message)):
        add(name, text)
    if doc.properties:
        props = etree.SubElement(root, ns + "properties")
        for name in sorted(doc.properties):
            prop = etree.SubElement(props, ns + "property", name=document.xml_safe(str(name)))
            prop.text = document.xml_safe(document.json_text(doc.properties[name]))
    body = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return re.sub(rb"[\xf0-\xf4][\x80-\xbf]{3}", lambda m: b"&#x%X;" % ord(m.group().decode("utf-8")), body)


#: characters that escaping, XML 1.0 or UTF-8 treat specially, and some ordinary ones
HOSTILE = ("&", "<", ">", '"', "'", "\t", "\n", "\r", "\x00", "\x01", "\x1f", "\x7f", "\x85", "\u2028", "\ud800",
           "\udfff", "\ufffe", "\uffff", "\ufffd", "\U0001f600", "\U0010ffff", "\U00010000", "]]>", "&amp;",
           "&#x1F600;", "<![CDATA[", "-->", "\\", ":", "é", "中", "a", " ", "0")


def hostile_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(0, 12)):
        if rng.random() < 0.7:
            parts.append(rng.choice(HOSTILE))
        else:  # any code point at all, surrogates included
            limit = rng.choice((0x80, 0x10000, 0x110000))
            parts.append(chr(rng.randrange(0, limit)))
    return "".join(parts)


def hostile_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return hostile_text(rng)
    if kind == 1:
        return rng.choice((0, -1, 2**63, 1.5, float("nan"), float("inf")))
    if kind == 2:
        return rng.choice((True, False, None))
    if kind in (3, 4):
        return hostile_text(rng)
    if kind == 5:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {hostile_text(rng): hostile_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def hostile_event(rng: random.Random) -> EventDocument:
    def maybe(text: str) -> str | None:
        return None if rng.random() < 0.2 else text

    service = rng.random() < 0.2
    return EventDocument(
        event_id=rng.randrange(1, 2**63), seq=None if service else rng.randrange(1, 2**31),
        type=rng.choice(list(EventType)), level=rng.choice(list(EventLevel)),
        workflow_id=None if service else WF, node_id=None if service else maybe(f"{WF}/{hostile_text(rng)}"),
        user=None if service else maybe(hostile_text(rng)), actor=hostile_text(rng), state=maybe(hostile_text(rng)),
        time=WHEN + dt.timedelta(microseconds=rng.randrange(10**12)), message=maybe(hostile_text(rng)),
        properties={hostile_text(rng): hostile_value(rng) for _ in range(rng.randrange(4))})


def test_the_text_renderer_writes_the_bytes_lxml_wrote_for_any_hostile_event():
    rng = random.Random(20261206)
    for _ in range(5000):
        event = hostile_event(rng)
        body = render(event)
        assert body == lxml_render(event), event


def test_hostile_events_render_to_well_formed_bodies_that_parse_back_to_their_safe_text():
    rng = random.Random(6122026)
    for _ in range(300):
        event = hostile_event(rng)
        body = render(event)
        assert b"\x00" not in body and not re.search(rb"[\xf0-\xf4]", body)
        back = etree.fromstring(body)
        message = back.find("{urn:workflow-broker:event:1.0}message")
        if event.message is not None:
            assert (message.text or "") == document.xml_safe(event.message)
        for prop in back.iterfind(".//{urn:workflow-broker:event:1.0}property"):
            assert prop.get("name") in {document.xml_safe(str(name)) for name in event.properties}
