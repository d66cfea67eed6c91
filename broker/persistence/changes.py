"""Messages to and from the writer, the single actor that changes state.

Controllers send *changes* (what they want to happen); the writer checks each against the transition
table and the node's current attempt, applies it with its events and outbox rows in one transaction
(grouping many changes per commit), and only after the commit tells the controllers what happened
(:class:`Committed`) and delivers any follow-up message a change asked for (``then``).

A change that names an attempt is *stale* when the node has moved on to another attempt: it is ignored
(answered with :class:`Rejected`), which is how duplicate or late reports are dropped.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from broker.description.model import WorkflowSpec
from broker.states import IN_FLIGHT, NodeState, WorkflowState

if TYPE_CHECKING:
    from broker.persistence.queries import Deletion

#: (actor_ref, message): told to the actor after the change has been committed
FollowUp = tuple[Any, Any]


@dataclass(frozen=True, slots=True)
class Transition:
    """Move one node to another state (checked against broker.states.TRANSITIONS)."""

    node_id: int
    to: NodeState
    #: who asks: "submission", "monitoring", "staging", "user:<name>", "admin:<name>"
    actor: str
    #: the attempt the caller believes is current; None skips the stale check (commands)
    attempt: int | None = None
    #: start a new attempt (the launch intent): attempt + 1
    new_attempt: bool = False
    #: column values to set with the transition: job_id, host, exit_code, outputs, workdir, retry_at, ...
    fields: tuple[tuple[str, Any], ...] = ()
    #: a failure the node's retry policy may turn into a retry (to FAILED only; a refused launch, say, is not)
    retryable: bool = False
    #: the event's message (why)
    message: str | None = None
    then: FollowUp | None = None
    #: where to send Rejected if the change does not apply
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Reported:
    """Progress and output properties a payload reported for an attempt."""

    node_id: int
    attempt: int
    actor: str
    progress: tuple[float, str | None] | None = None
    outputs: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Note:
    """An event that changes no state (launcher detail, retry scheduled, admin action)."""

    workflow_id: int | None
    type: str
    actor: str
    node_id: int | None = None
    message: str | None = None
    properties: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class MemberRows:
    """One member of an expansion and its body, ready to insert."""

    index: int
    path: str
    bindings: tuple[tuple[str, str], ...]
    #: (path, template, kind, priority) per body node, in body order
    nodes: tuple[tuple[str, str, str, int], ...]
    #: dependency edges inside the member as (parent position, child position) in ``nodes``
    edges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Expansion:
    """Expand a ready parameterized node into its members (one transaction)."""

    node_id: int
    actor: str
    members: tuple[MemberRows, ...]
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class CancelWorkflow:
    workflow_id: int
    actor: str
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class CancelNodes:
    """Cancel nodes (and, through the rules, skip their dependants)."""

    node_ids: tuple[int, ...]
    actor: str
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Restart:
    """Give failed, cancelled and skipped nodes a fresh attempt (rescue semantics).

    ``node_ids`` None restarts the whole workflow; otherwise the named nodes and their dependants.
    """

    workflow_id: int
    actor: str
    node_ids: tuple[int, ...] | None = None
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Submit:
    """Store a new workflow (durable acceptance) and start tracking it."""

    spec: WorkflowSpec
    descriptor: str
    owner: str
    label: str | None = None
    request_id: str | None = None
    experiment_id: str | None = None
    #: overrides of the description's values (None: keep the description's)
    event_level: str | None = None
    priority: int | None = None
    publish_metadata_to: str | None = None
    #: the stored workflow it comes from (name, version), None for a description given whole
    origin: tuple[str, int] | None = None
    #: the global id reserved for it (a request handed over by another process); None: a new one
    global_id: str | None = None
    reply_to: Any = None
    #: ``spec`` as stored (broker.description.model.to_json), encoded by the submitter: a big workflow's
    #: plan is seconds of Python, which the writer, whom every user's changes wait for, need not spend
    plan: str | None = None


@dataclass(frozen=True, slots=True)
class Track:
    """Start tracking an existing unfinished workflow (resume)."""

    workflow_id: int
    reply_to: Any = None
    #: its plan decoded already (a workflow just submitted); None: decoded from its row
    spec: Any = None


@dataclass(frozen=True, slots=True)
class MarkControl:
    """Record that a control command was applied."""

    control_id: int
    result: str


@dataclass(frozen=True, slots=True)
class AfterIntents:
    """A follow-up for launch intents committed together (one bundle), told with only the nodes whose intent
    was committed.

    Each intent is a :class:`Transition` to QUEUED that may be refused on its own (the node was cancelled a
    moment before the scheduler heard of it). Riding on one of the transitions, the follow-up would launch a
    cancelled member, or nothing at all for members whose intents were committed. Placed after the intents,
    this checks each node (QUEUED at its new attempt) and narrows the message with its ``only(node_ids)``.
    """

    then: tuple[Any, Any]
    #: (node id, attempt) of each intent
    nodes: tuple[tuple[int, int], ...]


class Planned(NamedTuple):
    """A workflow a deletion plans to remove."""

    workflow_id: int
    global_id: str


@dataclass(frozen=True, slots=True)
class DeleteWorkflows:
    """Delete finished workflows (every row of theirs goes through the foreign keys) and record what went, with
    what a plan left, as one service-level ADMIN_ACTION event, in one transaction; answered with
    :class:`Deleted`. A workflow that is no longer deletable now (restarted, given events) stays."""

    workflows: tuple[Planned, ...]
    actor: str
    #: the operation, named in the event ("deleteAllCompleted", "delete <global id>", ...)
    what: str
    #: global ids the plan left, and why (``reasons``, in the same order): reported in the event
    skipped: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    #: a bus is configured: a workflow goes only once its outbox has drained
    require_drained: bool = False
    #: refuse a workflow with an event newer than this (one just archived)
    last_event_id: int | None = None
    #: more properties of the event
    properties: dict[str, Any] | None = None
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Changes:
    """Several changes sent as one message (they join the same commit, in order)."""

    items: tuple[Any, ...]


Change = (Transition | Reported | Note | Expansion | CancelWorkflow | CancelNodes | Restart | Submit | Track
          | MarkControl | AfterIntents | DeleteWorkflows)


# ------------------------------------------------------------------------------------ from the writer


@dataclass(frozen=True, slots=True)
class ReadyNode:
    """A node that became ready, with what the scheduler needs to order and dispatch it."""

    node_id: int
    workflow_id: int
    kind: str
    path: str
    template: str
    #: the node's priority (higher first); the workflow's priority is looked up by workflow
    priority: int
    attempt: int
    #: every parameter binding visible to the node, outer sweeps first
    bindings: tuple[tuple[str, str], ...]
    member_index: int | None = None


@dataclass(frozen=True, slots=True)
class Moved:
    """A committed node state change, for slot accounting and timers."""

    node_id: int
    workflow_id: int
    old: NodeState
    new: NodeState
    attempt: int
    retry_at: dt.datetime | None = None

    @property
    def frees_slot(self) -> bool:
        """The attempt left flight (ended, or went back to waiting): its slot is free."""
        return self.old in IN_FLIGHT and self.new not in IN_FLIGHT


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """What the scheduler needs to know about a tracked workflow."""

    workflow_id: int
    global_id: str
    owner: str
    priority: int
    max_in_flight: int | None
    on_failure: str
    state: WorkflowState
    #: nodes in flight when tracking started (after a restart of the broker)
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class InFlight:
    """An attempt found in flight when tracking started, with what its recovery needs."""

    node: ReadyNode
    state: NodeState
    workdir: str | None
    job_id: str | None
    #: the host recorded with the attempt (a catalogue name, or login@host once it ran remotely)
    host: str | None = None
    #: the workflow's owner, whose account the attempt runs under
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Committed:
    """Sent to the scheduler after every commit that changed something it cares about."""

    ready: tuple[ReadyNode, ...] = ()
    moved: tuple[Moved, ...] = ()
    #: workflows that started being tracked (submitted or resumed)
    tracked: tuple[WorkflowInfo, ...] = ()
    #: workflows whose derived state changed: (workflow id, new state)
    workflows: tuple[tuple[int, WorkflowState], ...] = ()
    #: in-flight nodes a cancel must kill: (node id, attempt)
    kill: tuple[tuple[int, int], ...] = ()
    #: attempts in flight when a workflow started being tracked (broker restart): to recover
    resume: tuple[InFlight, ...] = ()
    #: the token of the Admission the scheduler answered during this commit (its moves were counted then)
    admitted: int | None = None


class WorkflowSummary(NamedTuple):
    """A workflow touched by a commit, as the writer's listeners get it (as positional arguments)."""

    workflow_id: int
    global_id: str
    state: WorkflowState
    #: node state value -> how many nodes are in it (states with none left out)
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class Rejected:
    change: Any
    reason: str
    #: the error that refused the change, when it was one: its kind reaches the caller (LimitExceeded...)
    error: Any = None


@dataclass(frozen=True, slots=True)
class Deleted:
    """Reply to DeleteWorkflows: what went and what stayed (global ids, with reasons for those that stayed)."""

    deletion: Deletion
    #: database ids of the deleted workflows
    workflow_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Accepted:
    """Reply to Submit / Track / Restart / Cancel*: the workflow concerned."""

    workflow_id: int
    global_id: str
    resumed: bool = False
