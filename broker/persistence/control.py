"""The control path: commands (cancel, restart) for a running broker, through the database.

``broker cancel`` and ``broker restart`` (and later the admin API) write a row into ``control``; the
running broker reads new rows within a second and applies them through its writer, then marks them
applied. When no broker holds the database, the command applies the change itself (see broker.cli).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.errors import NotFound
from broker.ids import split_global_id
from broker.persistence.models import Control, Node, Workflow

COMMANDS = ("cancel", "restart")


class ControlCommand(NamedTuple):
    """A control command not applied yet, with its target resolved, as the running broker reads it."""

    control_id: int
    #: one of COMMANDS
    command: str
    #: the target's workflow and node (a list of one; None: the whole workflow); None when ``error`` is set
    workflow_id: int | None
    node_ids: list[int] | None
    #: who asked: ``user:<name>`` or ``admin:<name>``
    actor: str
    #: why the target cannot be resolved (deleted meanwhile...)
    error: str | None = None


def resolve_target(s: Session, global_id: str) -> tuple[int, list[int] | None]:
    """(workflow id, [node id] or None for the whole workflow) of a workflow or node global id."""
    try:
        wf_gid, path = split_global_id(global_id)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    workflow_id = s.execute(select(Workflow.id).where(Workflow.global_id == wf_gid)).scalar()
    if workflow_id is None:
        raise NotFound(f"no workflow {wf_gid}")
    if not path:
        return workflow_id, None
    node_id = s.execute(select(Node.id).where(Node.workflow_id == workflow_id, Node.path == path)).scalar()
    if node_id is None:
        raise NotFound(f"no node {global_id}")
    return workflow_id, [node_id]


def request(s: Session, command: str, target: str, requested_by: str) -> int:
    """Queue a command for the running broker; returns the control row's id."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    resolve_target(s, target)  # refuse unknown targets now, not later in the broker's log
    row = Control(command=command, target=target, requested_by=requested_by)
    s.add(row)
    s.flush()
    return row.id


def applied(s: Session, control_id: int) -> tuple[bool, str | None]:
    """Whether a command has been applied yet, and its result."""
    row = s.execute(select(Control.applied_at, Control.result).where(Control.id == control_id)).one()
    return row.applied_at is not None, row.result
