"""What the dashboard changes: cancel and restart (after a confirmation page), submit, and the admin page.

Every change is a POST carrying the session's CSRF token (checked by :mod:`broker.ui.app` before these run)
and goes through the engine's methods, as the SOAP API's do; an action on another user's workflow is "not
found", like the API's.
"""

from __future__ import annotations

import logging
from typing import Any

from broker.api.identity import scope_of
from broker.api.submission import SubmissionFields, submit
from broker.errors import BrokerError, DescriptionError, NotFound
from broker.ids import split_global_id
from broker.persistence import queries as api_queries

log = logging.getLogger("broker.ui")

ACTIONS = ("cancel", "restart")
#: longest description accepted from the form (the API's own limits apply after this)
MAX_DESCRIPTION_CHARS = 16 * 1024**2


def actor(user: Any) -> str:
    """Who acts, as the events name them (the API's words)."""
    return f"{'admin' if user.admin else 'user'}:{user.name}"


def target(ui: Any, user: Any, global_id: str) -> tuple[int, list[int] | None]:
    """(workflow id, [node id] or None) of a global id the user may act on. Raises NotFound."""
    from sqlalchemy import select

    from broker.persistence.control import resolve_target
    from broker.persistence.models import Workflow

    try:
        wf_gid, _ = split_global_id(global_id)
    except ValueError:
        raise NotFound(f"no workflow or node {global_id}") from None
    with ui.api.sessions() as s:
        # the owner first: another user's workflow is "not found" whether the node named in it exists or not
        owner = s.execute(select(Workflow.owner_id).where(Workflow.global_id == wf_gid)).scalar()
        scope = scope_of(user)
        if owner is None or (scope is not None and owner != scope):
            raise NotFound(f"no workflow {wf_gid}")
        workflow_id, node_ids = resolve_target(s, global_id)
    return workflow_id, node_ids


def act(ui: Any, user: Any, action: str, global_id: str) -> None:
    """Cancel or restart a workflow or a node; returns once the engine has committed it."""
    workflow_id, node_ids = target(ui, user, global_id)
    engine = ui.api.engine
    if action == "cancel":
        if node_ids is None:
            engine.cancel(workflow_id, actor(user))
        else:
            engine.cancel_nodes(node_ids, actor(user))
    else:
        engine.restart(workflow_id, actor(user), None if node_ids is None else tuple(node_ids))
    log.info("%s %s %s from the dashboard", actor(user), action, global_id)


def submit_form(ui: Any, user: Any, form: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(global id of the accepted workflow, None) or (None, what the form shows again: the problems at
    their lines, or one error)."""
    content = form.get("file") or form.get("content") or ""
    shown = {"content": content[:1024**2]}
    if not content.strip():
        return None, {**shown, "error": "no description: upload a file or paste one"}
    if len(content) > MAX_DESCRIPTION_CHARS:
        return None, {**shown, "content": "", "error": f"the description is over {MAX_DESCRIPTION_CHARS:,} characters"}
    try:
        handle = submit(ui.api, user, SubmissionFields(content=content))
    except DescriptionError as exc:
        lines = content.splitlines() if len(content) <= 1024**2 else []
        bad: dict[int, list[str]] = {}
        for problem in exc.problems:
            bad.setdefault(problem.line, []).append(problem.message)
        return None, {**shown, "problems": list(exc.problems), "lines": lines, "bad_lines": bad}
    except BrokerError as exc:
        return None, {**shown, "error": str(exc)}
    return handle.global_id, {}


def admin_page(ui: Any) -> dict[str, Any]:
    """Service state, users, hosts with their in-flight counts and limits, outbox backlog."""
    with ui.api.sessions() as s:
        workflows, nodes = api_queries.state_counts(s)
        in_flight = api_queries.hosts_in_flight(s)
        backlog = api_queries.outbox_backlog(s)
        users = api_queries.users_info(s)
    limits = ui.host_limits()
    hosts = [_Host(name, in_flight.get(name, 0), limits.get(name)) for name in sorted(set(in_flight) | set(limits))]
    seconds = int(ui.api.uptime())
    return dict(service_state=ui.health.state.value, uptime=f"{seconds // 3600} h {seconds % 3600 // 60} min",
                backlog=backlog, workflows=workflows, nodes=nodes, hosts=hosts, users=users)


class _Host:
    __slots__ = ("name", "in_flight", "limit")

    def __init__(self, name: str, in_flight: int, limit: int | None):
        self.name, self.in_flight, self.limit = name, in_flight, limit
