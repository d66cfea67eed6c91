"""A write set: everything one group commit writes, collected while changes are applied to the mirror.

Node column updates are merged per node (two transitions of one node in a write set become one UPDATE), and
rows are written with one executemany per statement shape, so a commit costs a handful of statements
whatever the number of changes in it.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from broker.events.routing import destinations
from broker.events.types import EventType, level_of
from broker.states import TERMINAL

if TYPE_CHECKING:
    from broker.persistence.graph import MNode, MWorkflow


class WriteSet:
    """The rows and notifications of one commit."""

    def __init__(self, now: dt.datetime | None = None, *, publishing: bool = True):
        """``publishing``: whether a bus is configured; without one, events get no outbox rows."""
        self.now = now or dt.datetime.now(dt.timezone.utc)
        self.publishing = publishing
        #: id(node) -> (node, columns to set)
        self.node_cols: dict[int, tuple[MNode, dict[str, Any]]] = {}
        #: id(wf) -> (wf, columns to set)
        self.wf_cols: dict[int, tuple[MWorkflow, dict[str, Any]]] = {}
        #: event rows (without ids) and their destinations
        self.events: list[tuple[dict[str, Any], list[str]]] = []
        #: (member, body, edges) to insert, in order; member None: nodes a payload spawned (no member row)
        self.creations: list[tuple[MNode | None, list[MNode], tuple[tuple[int, int], ...]]] = []
        #: (node, its state before) of nodes that became the group of what their payload spawned
        self.spawned: list[tuple[MNode, Any]] = []
        #: ids of node rows to delete (what a restarted spawning node had spawned)
        self.deleted: list[int] = []
        #: (sweep, created nodes) whose rows must exist before they start
        self.expanded: list[tuple[MNode, list[MNode]]] = []
        self.ready: list[MNode] = []
        self.moved: list[tuple[MNode, Any, Any]] = []
        self.kill: list[tuple[int, int]] = []
        self.touched: dict[int, MWorkflow] = {}
        #: (actor_ref, message) to tell after the commit
        self.followups: list[tuple[Any, Any]] = []
        self.tracked: list[MWorkflow] = []
        #: control rows applied: (control id, result)
        self.controls: list[tuple[int, str]] = []
        #: in-flight attempts of newly tracked workflows (broker.persistence.changes.InFlight)
        self.resume: list[Any] = []
        #: (id(node), attempt number) -> (node, number, columns, new): attempt rows to insert (new) or update,
        #: merged per attempt like node updates (broker.persistence.attempts)
        self.attempts: dict[tuple[int, int], tuple[MNode, int, dict[str, Any], bool]] = {}

    def update(self, node: MNode, cols: dict[str, Any]) -> None:
        entry = self.node_cols.get(id(node))
        if entry is None:
            self.node_cols[id(node)] = (node, dict(cols))
        else:
            entry[1].update(cols)
        self.touched[node.wf.id] = node.wf

    def counts(self) -> None:
        """Write each touched workflow's node counts with its nodes (columns nodes_total, nodes_done), so any
        process reads a workflow's progress as committed, without the engine's memory or counting its nodes."""
        for wf in list(self.touched.values()):
            total = sum(wf.counts.values())
            done = sum(n for state, n in wf.counts.items() if state in TERMINAL)
            if (wf.nodes_total, wf.nodes_done) != (total, done):
                wf.nodes_total, wf.nodes_done = total, done
                self.workflow_update(wf, {"nodes_total": total, "nodes_done": done})

    def attempt(self, node: MNode, cols: dict[str, Any], *, new: bool) -> None:
        """Insert (``new``) or update the row of the node's current attempt."""
        key = (id(node), node.attempt)
        entry = self.attempts.get(key)
        if entry is None:
            self.attempts[key] = (node, node.attempt, dict(cols), new)
        else:
            entry[2].update(cols)

    def workflow_update(self, wf: MWorkflow, cols: dict[str, Any]) -> None:
        entry = self.wf_cols.get(id(wf))
        if entry is None:
            self.wf_cols[id(wf)] = (wf, dict(cols))
        else:
            entry[1].update(cols)
        self.touched[wf.id] = wf

    def create(self, member: MNode | None, body: list[MNode], edges: tuple[tuple[int, int], ...]) -> None:
        self.creations.append((member, body, edges))

    def event(self, wf: MWorkflow | None, event_type: EventType, *, actor: str, node: MNode | None = None,
              state: str | None = None, message: str | None = None,
              properties: dict[str, Any] | None = None) -> None:
        """Record an event; its per-workflow sequence number is taken now, in commit order."""
        level = level_of(event_type, state)
        seq = None
        if wf is not None:
            wf.event_seq += 1
            seq = wf.event_seq
            self.workflow_update(wf, {"event_seq": wf.event_seq})
        row = {"workflow_id": wf.id if wf is not None else None, "seq": seq,
               "node_path": node.path if node is not None else None, "actor": actor, "level": int(level),
               "type": event_type.value, "state": state, "message": message, "time": self.now,
               "properties": properties}
        if not self.publishing:
            targets = []
        elif wf is None:
            targets = destinations(owner=None, workflow_level=None, metadata_to=None, event_type=event_type,
                                   level=level)
        else:
            targets = destinations(owner=wf.owner, workflow_level=wf.event_level, metadata_to=wf.publish_metadata_to,
                                   event_type=event_type, level=level)
        self.events.append((row, targets))
