"""What one commit produced: the writer's deliveries, and what the scheduler learns of it (Committed).

The scheduler learns it twice for a batch that frees slots or readies nodes: once inside the transaction,
to answer with the launch intents that join it (broker.persistence.writer.Admission), once after the
commit. :class:`Consult` is that batch's question, asked once whatever the retries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.persistence import loading
from broker.persistence.changes import Committed, Moved, WorkflowInfo, WorkflowSummary
from broker.states import IN_FLIGHT, NodeState

if TYPE_CHECKING:
    from broker.persistence.writeset import WriteSet

#: the writer's question to the scheduler: (what the batch did so far) -> (changes to add, token)
Admit = Callable[[Committed], tuple[list[Any], "int | None"]]


@dataclass
class Outcome:
    """What a commit produced, for the writer to deliver."""

    committed: Committed = field(default_factory=Committed)
    followups: list[tuple[Any, Any]] = field(default_factory=list)
    replies: list[tuple[Any, Any]] = field(default_factory=list)
    #: (workflow id, global id, state, counts) of every workflow touched, for progress listeners
    summaries: list[WorkflowSummary] = field(default_factory=list)
    freed: int = 0  # nodes that left the mirror: after many, the writer trims once batch and changes are gone
    #: changes to commit after the changes that waited for this commit, in a commit of their own (a big
    #: workflow's tracking, once its rows are committed)
    later: list[Any] = field(default_factory=list)


class Consult:
    """One batch's question to the scheduler (asked once, whatever the retries) and its token."""

    __slots__ = ("admit", "token")

    def __init__(self, admit: Admit | None):
        self.admit = admit
        self.token: int | None = None


def committed(batch: WriteSet) -> Committed:
    """What the batch did, as the scheduler and the monitoring controller learn it."""
    ready = tuple(loading.ready_node(n) for n in batch.ready if n.state is NodeState.READY)
    moved = tuple(
        Moved(node_id=n.id, workflow_id=n.wf.id, old=old, new=new, attempt=n.attempt,
              retry_at=batch.node_cols.get(id(n), (None, {}))[1].get("retry_at"))
        for n, old, new in batch.moved if not n.is_group)
    # a spawning node's attempt is over although the node now runs on as a group: its slot is free
    moved += tuple(Moved(node_id=n.id, workflow_id=n.wf.id, old=old, new=NodeState.SUCCEEDED, attempt=n.attempt)
                   for n, old in batch.spawned if old in IN_FLIGHT)
    tracked = tuple(
        WorkflowInfo(workflow_id=wf.id, global_id=wf.global_id, owner=wf.owner, priority=wf.priority,
                     max_in_flight=wf.max_in_flight, on_failure=wf.constraint.on_failure, state=wf.state,
                     in_flight=sum(wf.counts.get(s, 0) for s in IN_FLIGHT))
        for wf in batch.tracked)
    workflows = tuple((wf.id, wf.state) for wf, cols in batch.wf_cols.values() if "state" in cols)
    return Committed(ready=ready, moved=moved, tracked=tracked, workflows=workflows, kill=tuple(batch.kill),
                     resume=tuple(batch.resume))


def frees_or_readies(what: Committed) -> bool:
    """Whether the scheduler could start something because of it."""
    return bool(what.ready) or any(m.frees_slot for m in what.moved)


def merge(a: Outcome, b: Outcome) -> Outcome:
    ca, cb = a.committed, b.committed
    return Outcome(
        committed=Committed(ready=ca.ready + cb.ready, moved=ca.moved + cb.moved, tracked=ca.tracked + cb.tracked,
                            workflows=ca.workflows + cb.workflows, kill=ca.kill + cb.kill,
                            resume=ca.resume + cb.resume, admitted=ca.admitted or cb.admitted),
        followups=a.followups + b.followups, replies=a.replies + b.replies, summaries=a.summaries + b.summaries,
        freed=a.freed + b.freed)
