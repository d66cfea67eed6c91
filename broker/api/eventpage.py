"""Event pages answered without spyne: ``getStatusInfo`` and ``getStatusInfoForUser``.

Clients follow the history by paging it (``lastId``), 200 events a page with the shipped ``[api]
page_size``. Through spyne a page cost 66-110 ms, about 0.4 ms an event building ORM objects, then
StatusInfo objects, then spyne's element trees; under load that made the API's slowest common call. Here
the page is read as plain rows and written as text: the same elements, order, namespaces and value formats
spyne writes (checked byte for byte against spyne's answers by ``tests/api/test_eventpage.py``). Errors are
the service's own (the edge maps them to the same faults), and any request whose arguments are not plainly
what the operation takes goes to spyne, so its rules (and faults) for odd input stay the only ones.
``[api] fast_status = false`` sends these calls through spyne too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from broker.api.faults import xml_text as _text
from broker.api.identity import caller, named_user, scope_of
from broker.errors import NotFound
from broker.events.types import EventLevel
from broker.persistence import queries
from broker.persistence.models import User

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CORE_NS = "urn:workflow-broker:core:v1"
TYPES_NS = "urn:workflow-broker:types:v1"
OPERATIONS = ("getStatusInfo", "getStatusInfoForUser")
_LAST_ID = f"{{{CORE_NS}}}lastId"
_USER = f"{{{CORE_NS}}}user"
#: a lastId the fast path reads itself (anything else, spyne parses: its faults for bad numbers stay)
_NUMBER = re.compile(r"-?[0-9]{1,18}")
_LEVELS = {level.value: level.name for level in EventLevel}


def _head(operation: str, types: bool = True) -> str:
    # spyne declares the types' namespace only when an element of it is written (not on an empty page)
    declared = f' xmlns:s0="{TYPES_NS}"' if types else ""
    return ("<?xml version='1.0' encoding='UTF-8'?>\n"
            f'<soap11env:Envelope xmlns:soap11env="{SOAP11_ENV}" xmlns:tns="{CORE_NS}"{declared}>'
            f"<soap11env:Body><tns:{operation}Response>")


def _json(value: Any) -> str:
    return _text(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


def event_xml(row: Any) -> str:
    """One event row (:data:`queries.EVENT_COLUMNS` + workflow global id) as spyne writes its StatusInfo."""
    event_id, time, type_, level, state, workflow_id, node_path, actor, message, props, workflow_gid = row
    global_id = workflow_gid
    if workflow_gid is not None and node_path:
        global_id = f"{workflow_gid}/{node_path}"
    props = props or {}
    parts = [f"<tns:return><s0:eventId>{event_id}</s0:eventId>"]
    if time is not None:
        parts.append(f"<s0:time>{time.isoformat()}</s0:time>")
    if type_ is not None:
        parts.append(f"<s0:type>{_text(type_)}</s0:type>")
    parts.append(f"<s0:level>{_LEVELS[level]}</s0:level>")
    if state is not None:
        parts.append(f"<s0:state>{_text(state)}</s0:state>")
    if global_id is not None:
        parts.append(f"<s0:globalId>{_text(global_id)}</s0:globalId>")
    if workflow_id is not None:
        parts.append(f"<s0:workflowId>{workflow_id}</s0:workflowId>")
    if workflow_gid is not None:
        parts.append(f"<s0:workflowGlobalId>{_text(workflow_gid)}</s0:workflowGlobalId>")
    if node_path is not None:
        parts.append(f"<s0:nodePath>{_text(node_path)}</s0:nodePath>")
    if actor is not None:
        parts.append(f"<s0:actor>{_text(actor)}</s0:actor>")
    if message is not None:
        parts.append(f"<s0:message>{_text(message)}</s0:message>")
    progress = props.get("percent") if type_ == "NODE_PROGRESS" else None
    if progress is not None:
        float(progress)  # spyne's check: a value that is no number fails as it fails there
        parts.append(f"<s0:progress>{_text(repr(progress))}</s0:progress>")  # spyne: repr, 42 stays 42
    for name, value in sorted(props.items()):
        parts.append(f"<s0:properties><s0:name>{_text(str(name))}</s0:name><s0:value>{_json(value)}</s0:value>"
                     "</s0:properties>")
    parts.append("</tns:return>")
    return "".join(parts)


def page_answer(operation: str, rows: Any) -> bytes:
    """The response envelope of one page of events."""
    if not rows:
        return (_head(operation, types=False)[:-1] + "/></soap11env:Body></soap11env:Envelope>").encode("utf-8")
    body = "".join(event_xml(row) for row in rows)
    return (_head(operation) + body + f"</tns:{operation}Response></soap11env:Body></soap11env:Envelope>"
            ).encode("utf-8")


def _arguments(call: Any, names: tuple[str, ...]) -> dict[str, str | None] | None:
    """The call's arguments by tag, when they are plainly some of ``names`` in order, each at most once,
    without attributes, a lastId a plain number; else None (the request goes to spyne)."""
    found: dict[str, str | None] = {}
    position = 0
    for child in call:
        if not isinstance(child.tag, str) or child.attrib or len(child):
            return None
        while position < len(names) and names[position] != child.tag:
            position += 1
        if position == len(names):
            return None  # unknown, repeated or out of order
        found[child.tag] = child.text
        position += 1
    last = found.get(_LAST_ID, "0")
    if last is None or not _NUMBER.fullmatch(last) or (call.text or "").strip():
        return None
    return found


def page_handler(db: Any, page_size: int) -> Callable[[Any, dict[str, Any]], bytes | None]:
    """The edge's handler of both event-page operations: (parsed envelope, environ) -> response body, or
    None for a request it leaves to spyne. ``db``: the SQLAlchemy engine the page is read with."""

    def answer(tree: Any, environ: dict[str, Any]) -> bytes | None:
        body = tree.find(f"{{{SOAP11_ENV}}}Body")
        call = body[0] if body is not None and len(body) == 1 else None
        if call is None or not isinstance(call.tag, str) or call.attrib:
            return None
        operation = call.tag.rpartition("}")[2]
        if call.tag != f"{{{CORE_NS}}}{operation}" or operation not in OPERATIONS:
            return None
        names = (_USER, _LAST_ID) if operation == "getStatusInfoForUser" else (_LAST_ID,)
        args = _arguments(call, names)
        if args is None:
            return None
        user = caller(environ)
        last_id = max(0, int(args.get(_LAST_ID) or 0))
        with db.connect() as connection:
            if operation == "getStatusInfo":
                rows = queries.event_rows(connection, last_id, page_size, scope_of(user), every_event=user.admin)
            else:
                name = named_user(user, args.get(_USER), operation)
                owner = connection.execute(select(User.id).where(User.name == name)).scalar_one_or_none()
                if owner is None:
                    raise NotFound(f"no user {name!r}")
                rows = queries.event_rows(connection, last_id, page_size, owner)
        return page_answer(operation, rows)

    return answer
