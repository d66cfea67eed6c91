"""The event message: an XML document (schemas/event.xsd) as the body, and the same facts as headers.

The body is a pure function of the stored event row: the same event always renders to the same bytes, so
a message the relay publishes again after a crash (at-least-once delivery) is identical to the first one.
Text is made safe for XML 1.0 first: characters XML cannot carry (NUL and other C0 controls, lone
surrogates, U+FFFE/U+FFFF) become U+FFFD. Besides keeping the document well-formed, that guarantees the
body has no NUL byte, which STOMP without ``content-length`` would read as the end of the frame.
Characters outside the Basic Multilingual Plane (emoji...) are written as numeric character references
(``&#x1F600;``): ActiveMQ keeps their 4-byte UTF-8 sequences in the JMS TextMessage it makes of a STOMP
frame, and its decoder (modified UTF-8) then refuses them, so ``getText()`` throws. Every XML parser reads
the reference back as the character.

Headers (all strings, fixed names, usable in JMS selectors): ``workflowId``, ``user``, ``nodeId``,
``eventType``, ``level``, ``seq``, ``eventId``, plus ``type`` (JMSType) and ``persistent: true``. Values
that do not apply (a service event's workflow) are empty strings.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from broker.description.xsd import Xsd
from broker.events.types import EventLevel, EventType
from broker.printable import xml_safe

#: the namespace of the event document; a new document version gets a new one
NAMESPACE = "urn:workflow-broker:event:1.0"
SCHEMA_FILE = "event.xsd"
_NS = "{" + NAMESPACE + "}"


#: json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False), built once
_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

#: the header names, fixed: stomp.py never escapes names, and JMS selectors refer to them
HEADER_NAMES = ("workflowId", "user", "nodeId", "eventType", "level", "seq", "eventId")


@dataclass(frozen=True, slots=True)
class EventDocument:
    """One event as consumers see it."""

    #: the event id (increasing in commit order)
    event_id: int
    #: the per-workflow sequence number; None for service-level events
    seq: int | None
    type: EventType
    level: EventLevel
    #: the workflow global id (wf-...); None for service-level events
    workflow_id: str | None
    #: the node global id (workflow global id + "/" + path); None for workflow-level events
    node_id: str | None
    #: the owner of the workflow
    user: str | None
    #: who caused the event (submission, monitoring, user:NAME, ...)
    actor: str
    #: the new state of a state change
    state: str | None
    #: commit time, aware UTC
    time: dt.datetime
    message: str | None = None
    #: name -> JSON-compatible value
    properties: dict[str, Any] = field(default_factory=dict)


def json_text(value: Any) -> str:
    """A property value as compact, deterministic JSON (keys sorted); NaN and infinities become strings."""
    try:
        return _JSON.encode(value)
    except ValueError:  # NaN or an infinity somewhere inside: JSON has no spelling for them
        return json.dumps(str(value), ensure_ascii=False)


def format_time(value: dt.datetime) -> str:
    """UTC with microseconds and a Z: ``2024-05-01T12:00:00.123456Z``."""
    if value.tzinfo is None:
        raise ValueError("naive datetime in an event")
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: the XML declaration and root start tag, as lxml wrote them (the body must stay byte for byte the same)
_HEAD = f"<?xml version='1.0' encoding='UTF-8'?>\n<event xmlns=\"{NAMESPACE}\">"
#: text content: the escapes libxml2 writes (a CR would be read back as a LF if left alone)
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_MARKUP = re.compile("[&<>\r]")
#: attribute values: also the quote and the white space attribute-value normalization would turn into spaces
_ATTRIBUTE_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;",
                                    "\n": "&#10;", "\r": "&#13;"})
#: a character outside the Basic Multilingual Plane
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _astral_reference(match: re.Match[str]) -> str:
    return f"&#x{ord(match.group()):X};"


def _text(text: str) -> str:
    """Character data as XML text, markup escaped (characters XML cannot carry are replaced in the whole
    body at once, by :func:`render`)."""
    # most texts need no escape, and finding that out is much cheaper than translating
    return text.translate(_TEXT_ESCAPES) if _MARKUP.search(text) else text


def render(doc: EventDocument) -> bytes:
    """The UTF-8 XML body of an event (valid against schemas/event.xsd).

    Written as text rather than built with lxml (a quarter of the relay's time while it drained a backlog):
    the same bytes lxml wrote, escapes included, which tests/events/test_document.py checks against an
    lxml rendering over many hostile values.
    """
    # id, sequence, type, level and time are ASCII the broker wrote: nothing to escape
    parts = [_HEAD, f"<id>{doc.event_id}</id>"]
    if doc.seq is not None:
        parts.append(f"<sequence>{doc.seq}</sequence>")
    parts.append(f"<type>{EventType(doc.type).value}</type><level>{EventLevel(doc.level).name}</level>")
    for name, value in (("workflowId", doc.workflow_id), ("nodeId", doc.node_id), ("user", doc.user),
                        ("actor", doc.actor), ("state", doc.state)):
        if value is not None:
            parts.append(f"<{name}>{_text(value)}</{name}>")
    parts.append(f"<time>{format_time(doc.time)}</time>")
    if doc.message is not None:
        parts.append(f"<message>{_text(doc.message)}</message>")
    if doc.properties:
        parts.append("<properties>")
        for name in sorted(doc.properties):
            attribute = str(name).translate(_ATTRIBUTE_ESCAPES)
            parts.append(f'<property name="{attribute}">{_text(json_text(doc.properties[name]))}</property>')
        parts.append("</properties>")
    parts.append("</event>")
    # the element names and escapes are plain ASCII: what XML cannot carry, and what lies outside the Basic
    # Multilingual Plane (as a character reference), can only be in text and attribute values
    body = xml_safe("".join(parts))
    if not body.isascii():  # a flag of the string: free
        body = _ASTRAL.sub(_astral_reference, body)
    return body.encode("utf-8")


def headers(doc: EventDocument) -> dict[str, str]:
    """The message headers of an event: every value a string (JMS selectors compare strings)."""
    return {
        "workflowId": doc.workflow_id or "",
        "user": doc.user or "",
        "nodeId": doc.node_id or "",
        "eventType": EventType(doc.type).value,
        "level": EventLevel(doc.level).name,
        "seq": "" if doc.seq is None else str(doc.seq),
        "eventId": str(doc.event_id),
        # JMSType in Java
        "type": EventType(doc.type).value,
        # stored by the bus; a non-persistent message can be lost on a bus crash even after its receipt
        "persistent": "true",
    }


#: the event document's schema (its root element is <event>)
EVENT_XSD = Xsd(SCHEMA_FILE, NAMESPACE, "event")


def event_schema() -> etree.XMLSchema:
    """The compiled schemas/event.xsd (loaded once)."""
    return EVENT_XSD.schema()


def _parser() -> etree.XMLParser:
    # a body comes from the bus: no entities, no DTD, no network
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def validation_errors(body: bytes | str) -> list[str]:
    """Why a message body is not a valid event document (empty when it is)."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    try:
        tree = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    if tree.getroottree().docinfo.doctype:
        return ["a DOCTYPE is not allowed in an event document"]
    return [f"line {e.line}: {e.message}" for e in EVENT_XSD.errors(tree)[0]]


def parse(body: bytes | str) -> EventDocument:
    """Read a message body back (for Python consumers). Raises ValueError when it is not a valid document."""
    problems = validation_errors(body)
    if problems:
        raise ValueError("invalid event document: " + "; ".join(problems))
    data = body.encode("utf-8") if isinstance(body, str) else body
    root = etree.fromstring(data, _parser())

    def text(name: str) -> str | None:
        element = root.find(_NS + name)
        return None if element is None else (element.text or "")

    properties = {}
    for prop in root.iterfind(f"{_NS}properties/{_NS}property"):
        properties[prop.get("name")] = json.loads(prop.text or "null")
    seq = text("sequence")
    return EventDocument(
        event_id=int(text("id") or 0), seq=None if seq is None else int(seq), type=EventType(text("type")),
        level=EventLevel[text("level") or ""], workflow_id=text("workflowId"), node_id=text("nodeId"),
        user=text("user"), actor=text("actor") or "", state=text("state"),
        time=dt.datetime.strptime(text("time") or "", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc),
        message=text("message"), properties=properties)
