"""The service's state and its users, read with the API's own queries (``getServiceState``, ``getUserInfo``).

``broker admin state`` and ``broker admin users`` print these; both read through
:mod:`broker.persistence.queries`, the functions ``broker.api.wire`` builds the SOAP answers from, so the
command line and the API always agree. Only the uptime is the running service's own: the command line says
instead whether a broker holds the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from broker.persistence import queries


@dataclass(frozen=True, slots=True)
class ServiceState:
    """The AggregateSummary of getServiceState, less the uptime."""

    time: dt.datetime
    #: workflow state -> workflows
    workflows: dict[str, int]
    #: node state -> work-carrying nodes (execute nodes, unexpanded sweeps)
    nodes: dict[str, int]
    #: host -> jobs in flight there
    hosts: dict[str, int]
    #: outbox rows not yet published
    outbox_backlog: int


def service_state(s: Session) -> ServiceState:
    """Workflows and nodes by state, hosts with jobs in flight, outbox backlog."""
    workflows, nodes = queries.state_counts(s, None)
    return ServiceState(dt.datetime.now(dt.timezone.utc), dict(sorted(workflows.items())),
                        dict(sorted(nodes.items())), dict(sorted(queries.hosts_in_flight(s).items())),
                        queries.outbox_backlog(s))


def users(s: Session) -> list[queries.UserInfo]:
    """Every user with their workflows by state (as getUserInfo)."""
    return queries.users_info(s)


def as_json(state: ServiceState, broker_running: bool, bus: bool = True) -> dict[str, Any]:
    """The service state as a JSON document (the field names of AggregateSummary, plus whether a broker runs
    and whether a bus is configured: without one, events are never published and the backlog means nothing)."""
    return {"time": state.time.isoformat(), "workflows": state.workflows, "nodes": state.nodes,
            "hosts": state.hosts, "outboxBacklog": state.outbox_backlog, "brokerRunning": broker_running,
            "bus": bus}


def user_json(info: queries.UserInfo) -> dict[str, Any]:
    """One user as a JSON document (the field names of UserSubmissions)."""
    return {"user": info.name, "admin": info.role == "admin", "workflows": dict(sorted(info.workflows.items())),
            "total": sum(info.workflows.values()),
            "lastSubmitted": None if info.last_submitted is None else info.last_submitted.isoformat()}
