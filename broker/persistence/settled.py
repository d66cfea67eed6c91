"""Refusing changes to nodes of a finished workflow without loading it into the writer's mirror again.

A finished workflow leaves the mirror, but changes naming its nodes can still arrive: the scheduler's launch
intents for nodes it took just before a cancel (Transition to queued, and their AfterIntents), a late report.
Loading the workflow again only to refuse them put all its nodes back into the mirror (a cancelled
100,000-node workflow: its plan, 100,000 rows and nodes, over 100 MB) after every cancel, and told the
scheduler about a workflow it then never forgot. Every node of a finished workflow has ended, so the refusal
the mirror would give can be read from the node's own row. Whatever might apply (a transition the table
allows, a retryable failure whose reason depends on the retry policy) is left to the mirror, as before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.errors import BrokerError, StateError
from broker.persistence.changes import AfterIntents, Expansion, Reported, Transition
from broker.persistence.models import Node, Workflow
from broker.states import TERMINAL, WORKFLOW_TERMINAL, NodeState, WorkflowState, check_transition


def refuse(s: Session, change: Any, node_id: int) -> None:
    """Raise the mirror's refusal of ``change`` (a change naming node ``node_id``; None: nothing is checked)
    when :func:`refusal` knows it without loading the workflow."""
    if change is not None and (error := refusal(s, change, node_id)) is not None:
        raise error


def refusal(s: Session, change: Any, node_id: int) -> BrokerError | None:
    """The error the mirror would refuse ``change`` with, when node ``node_id`` has ended and its workflow has
    finished; None otherwise (no such node, or unfinished, or the change might apply): then the caller loads
    the workflow."""
    row = s.execute(select(Node.path, Node.attempt, Node.state, Node.kind, Node.members,
                           Workflow.state.label("workflow_state"))
                    .join(Workflow, Workflow.id == Node.workflow_id).where(Node.id == node_id)).first()
    if row is None or WorkflowState(row.workflow_state) not in WORKFLOW_TERMINAL or \
            NodeState(row.state) not in TERMINAL:
        return None
    state = NodeState(row.state)
    if isinstance(change, Transition):  # Store._transition's checks, in its order
        if change.attempt is not None and change.attempt != row.attempt:
            return BrokerError(f"stale report for attempt {change.attempt} of '{row.path}' (now {row.attempt})")
        if change.to is NodeState.FAILED and change.retryable:
            return None  # the reason names the retry policy's verdict: the mirror's to give
        group = row.kind == "member" or row.members is not None
        try:
            check_transition(state, change.to, group=group)
        except StateError as exc:
            return exc
        return None
    if isinstance(change, Reported):
        return BrokerError(f"stale report for attempt {change.attempt} of '{row.path}'")
    if isinstance(change, Expansion):
        return StateError(f"node '{row.path}' is not a parameterized node ready to expand")
    if isinstance(change, AfterIntents):  # only queued nodes keep their intent
        return BrokerError(f"node {node_id} has ended")
    return None


__all__ = ["refusal", "refuse"]
