"""The nodes and workflows of the writer's mirror: state, DAG links and the counters the rules read.

A node keeps, besides its state and attempt, its parents and children in the DAG, how many of its parents
have not ended and how many units of those that did succeeded or not (for its failure constraint), and,
when it is a group (a sweep once expanded, or one member), how many of its children are still pending and
how they ended. Only the writer thread touches these objects.
"""

from __future__ import annotations

from typing import Any

from broker.description.model import WorkflowSpec, from_json, walk
from broker.events.types import EventLevel
from broker.states import FailureConstraint, NodeState, WorkflowState


class MNode:
    """One node as the writer knows it."""

    __slots__ = ("id", "wf", "path", "template", "kind", "state", "attempt", "retries", "priority", "parent",
                 "deps", "children", "unfinished", "ok_units", "bad_units", "named_bad", "pending", "g_ok",
                 "g_bad", "g_cancelled", "members", "bindings", "member_index", "name", "inside", "last_progress",
                 "spawn")

    def __init__(self, id: int | None, wf: MWorkflow, path: str, template: str, kind: str, state: NodeState,
                 *, attempt: int = 0, retries: int = 0, priority: int = 0, parent: MNode | None = None,
                 members: int | None = None, bindings: tuple[tuple[str, str], ...] = (),
                 member_index: int | None = None, spawn: dict[str, Any] | None = None):
        self.id = id
        self.wf = wf
        self.path = path
        self.template = template
        self.kind = kind
        self.state = state
        self.attempt = attempt
        self.retries = retries
        self.priority = priority
        self.parent = parent
        self.deps: list[MNode] = []
        self.children: list[MNode] = []
        self.unfinished = self.ok_units = self.bad_units = 0
        self.named_bad = False
        self.pending = self.g_ok = self.g_bad = self.g_cancelled = 0
        self.members = members
        self.bindings = bindings
        self.member_index = member_index
        #: a group's direct children (a sweep's members, a member's body nodes)
        self.inside: list[MNode] = []
        #: (attempt, percent, message) of the last progress recorded: the same report arriving through both
        #: channels (the elf's push, the broker's read of the output) becomes one event
        self.last_progress: tuple[int, float, str | None] | None = None
        #: the spawn record of an execute node whose payload spawned a fragment (broker.description.spawn)
        self.spawn = spawn
        #: the node's id in the description (last path segment without a member index)
        self.name = path.rsplit("/", 1)[-1].split("[", 1)[0]

    @property
    def is_group(self) -> bool:
        # members: what an expanded sweep expanded into, or what a node's payload spawned under it
        return self.kind == "member" or self.members is not None

    @property
    def counted(self) -> bool:
        """Whether the node counts in the workflow's state (work carriers: not groups)."""
        return not self.is_group

    def units(self) -> tuple[int, int]:
        """(ok, bad) units this node contributes to a dependant's failure constraint once terminal."""
        if self.members is not None and self.kind != "member":  # a sweep's member, a spawned node: one unit each
            return self.g_ok, self.members - self.g_ok
        return (1, 0) if self.state is NodeState.SUCCEEDED else (0, 1)

    def all_bindings(self) -> tuple[tuple[str, str], ...]:
        """Every binding visible to the node, outer sweeps first."""
        chain = []
        node: MNode | None = self
        while node is not None:
            if node.bindings:
                chain.append(node.bindings)
            node = node.parent
        return tuple(pair for bindings in reversed(chain) for pair in bindings)


class MWorkflow:
    __slots__ = ("id", "global_id", "owner", "spec", "templates", "event_level", "event_seq", "state", "counts",
                 "constraint", "cancel_requested", "priority", "max_in_flight", "publish_metadata_to", "nodes",
                 "started_at", "total_nodes", "size", "nodes_total", "nodes_done")

    def __init__(self, row: Any, owner: str, spec: WorkflowSpec | None = None):
        self.id: int = row.id
        self.global_id: str = row.global_id
        self.owner = owner
        self.spec: WorkflowSpec = spec if spec is not None else from_json(row.plan)
        self.templates = dict(walk(self.spec.nodes))
        self.event_level = EventLevel(row.event_level)
        self.event_seq: int = row.event_seq
        self.state = WorkflowState(row.state)
        self.counts: dict[NodeState, int] = {}
        self.constraint: FailureConstraint = self.spec.failure
        self.cancel_requested: bool = bool(row.cancel_requested)
        self.priority: int = row.priority
        self.max_in_flight: int | None = row.max_in_flight
        self.publish_metadata_to: str | None = row.publish_metadata_to
        self.nodes: list[MNode] = []
        self.started_at = row.started_at
        self.total_nodes = 0
        #: the node counts last written to its row (columns of revision 0011; None: never written)
        self.nodes_total: int | None = getattr(row, "nodes_total", None)
        self.nodes_done: int | None = getattr(row, "nodes_done", None)
        #: stored nodes as [limits] max_nodes counts them (as validation does): every row but sweep members
        self.size = 0

    def count(self, state: NodeState, delta: int) -> None:
        self.counts[state] = self.counts.get(state, 0) + delta
