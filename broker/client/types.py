"""What the client returns: frozen dataclasses built from the API's answers (never zeep objects).

Times are aware UTC datetimes. Property and output values are decoded from the JSON text the API carries;
the mappings inside these dataclasses are read-only views.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lxml import etree

#: workflow states after which nothing changes by itself
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: the namespace of getWorkflowAsXml's document (schemas/workflow-state.xsd)
STATE_NS = "urn:workflow-broker:state:1"


@dataclass(frozen=True, slots=True)
class Status:
    """The current state of a workflow or a node (``getStatusInfoForId``)."""

    #: the workflow's or the node's global id
    global_id: str
    #: accepted, running, succeeded, failed, cancelled (a node: waiting, ready, ..., skipped)
    state: str
    workflow_id: int
    workflow_global_id: str
    #: None for a workflow
    node_path: str | None
    message: str | None
    #: percent of the workflow's nodes done (a node: its last reported progress), or None
    progress: float | None
    #: the id of the newest event about it: ``events(after=...)`` from here shows what comes next
    event_id: int
    time: dt.datetime | None

    @property
    def done(self) -> bool:
        """Whether a workflow's state is final (succeeded, failed or cancelled)."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the history (``getStatusInfo``), oldest first; ``id`` increases in commit order."""

    id: int
    time: dt.datetime | None
    #: WORKFLOW_SUBMITTED, WORKFLOW_STATE, NODE_STATE, NODE_PROGRESS, NODE_OUTPUT, ...
    type: str
    #: ERROR, INFO, STATUS, PROGRESS or DEBUG
    level: str | None
    state: str | None
    global_id: str | None
    workflow_id: int | None
    workflow_global_id: str | None
    node_path: str | None
    #: who caused it: submission, monitoring, elf, user:<name>, admin:<name>, ...
    actor: str | None
    message: str | None
    progress: float | None
    #: the event's properties, values decoded from JSON
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a workflow as ``getWorkflowAsXml`` shows it."""

    #: database id
    id: int
    global_id: str
    #: ids joined by ``/``; a sweep member is ``sweep[3]``
    path: str
    #: execute, sweep, member, ...
    kind: str
    state: str
    attempt: int | None
    progress: float | None
    host: str | None
    exit_code: int | None
    message: str | None
    started: dt.datetime | None
    finished: dt.datetime | None
    #: output properties reported by the payload, values decoded from JSON
    outputs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Summary:
    """Workflows and nodes by state (``getStateForUser``; the service's, ``getServiceState``, has the rest)."""

    #: the user summarised; None for the whole service
    user: str | None
    time: dt.datetime | None
    workflows: Mapping[str, int]
    nodes: Mapping[str, int]
    #: host -> nodes in flight there (service only)
    hosts: Mapping[str, int]
    #: events waiting to be published on the bus (service only)
    outbox_backlog: int | None
    uptime_seconds: float | None
    version: str | None


@dataclass(frozen=True, slots=True)
class UserInfo:
    """One user of the broker and their workflows by state (``getUserInfo``)."""

    user: str
    admin: bool
    workflows: Mapping[str, int]
    total: int
    last_submitted: dt.datetime | None


# ------------------------------------------------------------------------------------------ conversions

def _frozen(mapping: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(mapping)


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:  # a value that is not JSON (an older broker): the text itself
        return text


def _counts(items: Any) -> Mapping[str, int]:
    return _frozen({item.state: item.count for item in items or ()})  # zeep shows an empty array as None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """zeep's aware datetimes (a FixedOffset zone of its own) in the standard library's UTC."""
    return None if value is None else value.astimezone(dt.timezone.utc)


def status(info: Any) -> Status:
    return Status(global_id=info.globalId, state=info.state, workflow_id=info.workflowId,
                  workflow_global_id=info.workflowGlobalId, node_path=info.nodePath, message=info.message,
                  progress=info.progress, event_id=info.eventId, time=_utc(info.time))


def event(info: Any) -> Event:
    return Event(id=info.eventId, time=_utc(info.time), type=info.type, level=info.level, state=info.state,
                 global_id=info.globalId, workflow_id=info.workflowId, workflow_global_id=info.workflowGlobalId,
                 node_path=info.nodePath, actor=info.actor, message=info.message, progress=info.progress,
                 properties=_frozen({p.name: _json(p.value) for p in info.properties or ()}))


def summary(info: Any) -> Summary:
    return Summary(user=info.user, time=_utc(info.time), workflows=_counts(info.workflows), nodes=_counts(info.nodes),
                   hosts=_frozen({h.host: h.jobs for h in info.hosts or ()}), outbox_backlog=info.outboxBacklog,
                   uptime_seconds=info.uptimeSeconds, version=info.version)


def user_info(info: Any) -> UserInfo:
    return UserInfo(user=info.user, admin=bool(info.admin), workflows=_counts(info.workflows),
                    total=info.total or 0, last_submitted=_utc(info.lastSubmitted))


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _time(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def nodes(document: str) -> list[Node]:
    """Every node of a ``<workflowState>`` document, parents before their children."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
    root = etree.fromstring(document.encode("utf-8"), parser)
    found = []
    for element in root.iter(f"{{{STATE_NS}}}node"):
        get = element.get
        message = element.find(f"{{{STATE_NS}}}message")
        outputs = {out.get("name"): _json(out.text or "null") for out in element.findall(f"{{{STATE_NS}}}output")}
        progress = get("progress")
        found.append(Node(id=int(get("id")), global_id=get("globalId"), path=get("path"), kind=get("kind"),
                          state=get("state"), attempt=_int(get("attempt")),
                          progress=None if progress is None else float(progress), host=get("host"),
                          exit_code=_int(get("exitCode")), message=None if message is None else message.text,
                          started=_time(get("started")), finished=_time(get("finished")),
                          outputs=_frozen(outputs)))
    return found
