"""Conversions from query results to wire types, shared by the two services."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from broker import __version__
from broker.api.context import ApiContext
from broker.api.types import (AggregateSummary, EstimatedEnd, HostInfo, HostJobs, Property, StateCount,
                              StatusInfo, UserSubmissions)
from broker.events.types import EventLevel
from broker.persistence import queries
from broker.persistence.models import Event
from broker.printable import xml_safe


def _counts(counts: dict[str, int]) -> list[StateCount]:
    return [StateCount(state=state, count=count) for state, count in sorted(counts.items())]


def _json(value: Any) -> str:
    return _text(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


def _text(value: str | None) -> str | None:
    """Text XML can carry: spyne's serialiser, given a control character, answers with an empty envelope."""
    return None if value is None else xml_safe(value)


def event_info(event: Event, workflow_global_id: str | None) -> StatusInfo:
    """One event as a StatusInfo; property values are JSON text."""
    global_id = workflow_global_id
    if workflow_global_id is not None and event.node_path:
        global_id = f"{workflow_global_id}/{event.node_path}"
    props = event.properties or {}
    return StatusInfo(
        eventId=event.id, time=event.time, type=event.type, level=EventLevel(event.level).name, state=event.state,
        globalId=global_id, workflowId=event.workflow_id, workflowGlobalId=workflow_global_id,
        nodePath=event.node_path, actor=_text(event.actor), message=_text(event.message),
        progress=props.get("percent") if event.type == "NODE_PROGRESS" else None,
        properties=[Property(name=str(k), value=_json(v)) for k, v in sorted(props.items())])


def status_info(status: queries.Status, estimate: Any = None) -> StatusInfo:
    """The current status of a workflow or node as a StatusInfo (``estimate``: its Estimate, if any)."""
    end = None if estimate is None else EstimatedEnd(p10=estimate.p10, p50=estimate.p50, p90=estimate.p90,
                                                      basis=min(estimate.basis, 2**31 - 1))
    return StatusInfo(estimatedEnd=end,
        eventId=status.last_event_id, time=status.time,
        type="NODE_STATE" if status.node_path else "WORKFLOW_STATE", state=status.state,
        globalId=status.global_id, workflowId=status.workflow_id, workflowGlobalId=status.workflow_global_id,
        nodePath=status.node_path, message=_text(status.message), progress=status.progress, properties=[])


def events(api: ApiContext, last_id: int | None, owner_id: int | None, every_event: bool = False,
           workflow_id: int | None = None) -> list[StatusInfo]:
    """A page of events after ``last_id`` (bounded by ``[api] page_size``)."""
    with api.sessions() as s:
        rows = queries.events_page(s, max(0, last_id or 0), api.settings.api.page_size, owner_id=owner_id,
                                   every_event=every_event, workflow_id=workflow_id)
        return [event_info(event, gid) for event, gid in rows]


def summary(api: ApiContext, owner_id: int | None, user: str | None, service: bool) -> AggregateSummary:
    """Workflows and nodes by state; the service's also has hosts, outbox backlog and uptime."""
    with api.sessions() as s:
        workflows, nodes = queries.state_counts(s, owner_id)
        result = AggregateSummary(user=user, time=dt.datetime.now(dt.timezone.utc), workflows=_counts(workflows),
                                  nodes=_counts(nodes), version=__version__)
        if service:
            result.hosts = [HostJobs(host=host, jobs=jobs)
                            for host, jobs in sorted(queries.hosts_in_flight(s).items())]
            result.outboxBacklog = queries.outbox_backlog(s)
            result.uptimeSeconds = round(api.uptime(), 3)
    return result


def hosts(api: ApiContext) -> list[HostInfo]:
    """Every catalogue host with its tags, limits and nodes in flight (as ``broker admin hosts``)."""
    from broker.admin.hosts import host_infos

    with api.sessions() as s:
        infos = host_infos(api.engine.resources.catalogue, s)
    return [HostInfo(name=i.name, launcher=i.launcher, tags=list(i.tags), maxJobs=i.max_jobs, inFlight=i.in_flight,
                     default=i.default, limitNodes=i.limits.nodes, limitCores=i.limits.cores,
                     limitMemoryBytes=i.limits.memory, limitWalltimeSeconds=i.limits.walltime) for i in infos]


def users(api: ApiContext) -> list[UserSubmissions]:
    """Every user with their workflows by state."""
    with api.sessions() as s:
        infos = queries.users_info(s)
    return [UserSubmissions(user=i.name, admin=i.role == "admin", workflows=_counts(i.workflows),
                            total=sum(i.workflows.values()), lastSubmitted=i.last_submitted) for i in infos]
