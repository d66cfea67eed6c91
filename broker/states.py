"""Node and workflow states, the one node transition table, and the pure workflow-state function.

Every node state change in the broker goes through :func:`check_transition`; the repository calls it
before it writes. Workflow states are never written by hand: :func:`derive_workflow_state` computes them
from node state counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class NodeState(StrEnum):
    WAITING = "waiting"          # parents not finished yet
    READY = "ready"              # parents satisfied; waiting for a slot (or, for a sweep, to expand)
    STAGING_IN = "staging_in"    # input files being copied into the work directory
    QUEUED = "queued"            # launch intent committed; process starting or job pending in a scheduler
    RUNNING = "running"          # payload running (for a sweep: expanded, members in progress)
    STAGING_OUT = "staging_out"  # payload succeeded; output files being copied out
    RETRY_WAIT = "retry_wait"    # an attempt failed and a retry is due after a backoff
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"          # can no longer run: a required parent did not succeed


class WorkflowState(StrEnum):
    ACCEPTED = "accepted"        # stored; no node has started yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: every legal node transition: state -> states it may move to. Anything else is a bug (StateError).
TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.WAITING: frozenset({NodeState.READY, NodeState.SKIPPED, NodeState.CANCELLED}),
    NodeState.READY: frozenset({NodeState.STAGING_IN, NodeState.QUEUED, NodeState.RUNNING, NodeState.FAILED,
                                NodeState.CANCELLED}),
    NodeState.STAGING_IN: frozenset({NodeState.QUEUED, NodeState.RETRY_WAIT, NodeState.FAILED,
                                     NodeState.CANCELLED}),
    # a short batch job can finish between two polls, so QUEUED may skip RUNNING
    NodeState.QUEUED: frozenset({NodeState.RUNNING, NodeState.STAGING_OUT, NodeState.SUCCEEDED,
                                 NodeState.RETRY_WAIT, NodeState.FAILED, NodeState.CANCELLED}),
    NodeState.RUNNING: frozenset({NodeState.STAGING_OUT, NodeState.SUCCEEDED, NodeState.RETRY_WAIT,
                                  NodeState.FAILED, NodeState.CANCELLED}),
    # RUNNING: a node whose payload spawned nodes becomes their group once its stage-out is done
    NodeState.STAGING_OUT: frozenset({NodeState.SUCCEEDED, NodeState.RETRY_WAIT, NodeState.FAILED,
                                      NodeState.CANCELLED, NodeState.RUNNING}),
    NodeState.RETRY_WAIT: frozenset({NodeState.READY, NodeState.CANCELLED}),
    # restart (rescue semantics): a fresh attempt re-evaluates the parents from WAITING
    NodeState.FAILED: frozenset({NodeState.WAITING}),
    NodeState.CANCELLED: frozenset({NodeState.WAITING}),
    NodeState.SKIPPED: frozenset({NodeState.WAITING}),
    NodeState.SUCCEEDED: frozenset(),
}

#: transitions of a *group*: a member of a sweep, or a sweep once expanded. A group's state follows its
#: children: it runs while any of them is unfinished, ends with group_outcome() of theirs, and reopens
#: (back to RUNNING) when a restart gives one of its children a fresh attempt.
GROUP_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.RUNNING: frozenset({NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED}),
    NodeState.SUCCEEDED: frozenset(),
    NodeState.FAILED: frozenset({NodeState.RUNNING}),
    NodeState.CANCELLED: frozenset({NodeState.RUNNING}),
}

TERMINAL: frozenset[NodeState] = frozenset(
    {NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED, NodeState.SKIPPED})
#: states in which a node holds a slot (counts against in-flight limits)
IN_FLIGHT: frozenset[NodeState] = frozenset(
    {NodeState.STAGING_IN, NodeState.QUEUED, NodeState.RUNNING, NodeState.STAGING_OUT})
#: states that have not started any work
NOT_STARTED: frozenset[NodeState] = frozenset({NodeState.WAITING, NodeState.READY})
WORKFLOW_TERMINAL: frozenset[WorkflowState] = frozenset(
    {WorkflowState.SUCCEEDED, WorkflowState.FAILED, WorkflowState.CANCELLED})


def check_transition(current: NodeState, new: NodeState, *, group: bool = False) -> None:
    """Raise StateError unless ``current -> new`` is in :data:`TRANSITIONS` (or :data:`GROUP_TRANSITIONS`)."""
    table = GROUP_TRANSITIONS if group else TRANSITIONS
    if new not in table.get(current, ()):
        from broker.errors import StateError

        kind = "group" if group else "node"
        raise StateError(f"illegal {kind} transition {current} -> {new}")


@dataclass(frozen=True, slots=True)
class FailureConstraint:
    """How many nodes may end without succeeding (failed, skipped or cancelled) before the workflow fails.

    The default, ``max_failed=0``, means one failed node fails the workflow. ``fraction`` (0..1) allows that
    share of all nodes instead; when both are set, the larger allowance applies.
    """

    max_failed: int = 0
    fraction: float | None = None
    #: "continue": nodes that can still run go on (less left for a restart); "stop": cancel the rest
    on_failure: str = "continue"

    def allows(self, not_succeeded: int, total: int) -> bool:
        allowed = self.max_failed
        if self.fraction is not None:
            allowed = max(allowed, int(self.fraction * total))
        return not_succeeded <= allowed


def derive_workflow_state(counts: Mapping[NodeState, int], constraint: FailureConstraint,
                          cancel_requested: bool = False, *, started: bool = False) -> WorkflowState:
    """The workflow's state from the counts of its nodes' states (a pure function).

    ``counts`` covers the nodes that carry work: execute nodes, and parameterized nodes that have not
    expanded (an expanded one is represented by its members). ``started``: the workflow has run before; it
    is then never ``accepted`` again, though its only node may be back to ready (waiting for its retry, or
    restarted).
    """
    total = sum(counts.values())
    active = sum(n for s, n in counts.items() if s not in TERMINAL)
    if active:
        if not started and all(s in NOT_STARTED for s, n in counts.items() if n):
            return WorkflowState.ACCEPTED
        return WorkflowState.RUNNING
    if cancel_requested and counts.get(NodeState.CANCELLED, 0):
        return WorkflowState.CANCELLED
    not_succeeded = total - counts.get(NodeState.SUCCEEDED, 0)
    return WorkflowState.SUCCEEDED if constraint.allows(not_succeeded, total) else WorkflowState.FAILED
