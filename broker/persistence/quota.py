"""Node limits at run time: ``[limits] max_nodes`` per workflow and ``max_nodes_per_user`` per user.

Validation counts a description's nodes after static expansion (a ``fromOutput`` parameter counting one
value); the true count of a sweep driven by an upstream output is known only when it expands. So the writer,
the one place every expansion goes through, checks again before anything is written, and sweeps that expand
in the same commit see each other's nodes (checking in the expand workers let 100 sweeps each see the same
stale count, and a workflow limited to 2,000 nodes ended with 10,001).

Nodes are counted as validation counts them: every stored row except a sweep's members (groups), and an
expansion counts what it adds with the nested sweeps of its body expanded statically. The counts are the
mirror's, kept as nodes are created and workflows come and go, so a check costs no query; the one exception
is a user's unfinished workflows that this broker does not track (``broker run`` tracks only its own), whose
nodes are counted once from the database and remembered until one of them is tracked.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.description.checks import body_node_count, expanded_node_count
from broker.description.model import SweepSpec, WorkflowSpec, nodes_from_data
from broker.errors import LimitExceeded
from broker.persistence.graph import MNode
from broker.persistence.mirror import Mirror
from broker.persistence.models import Node, User, Workflow
from broker.states import WorkflowState

_UNFINISHED = (WorkflowState.ACCEPTED.value, WorkflowState.RUNNING.value)


class NodeQuota:
    """Checks submissions and expansions against the node limits; used by the store (the writer's thread)."""

    def __init__(self, limits: Any):
        #: LimitSettings, or None (a store without limits, in unit tests): nothing is checked
        self.limits = limits
        #: owner -> nodes of their unfinished workflows that the mirror does not track
        self._untracked: dict[str, int] = {}

    def forget(self, owner: str | None = None) -> None:
        """Drop remembered counts: of one owner (one of their workflows is now tracked), or all (mirror reset)."""
        if owner is None:
            self._untracked.clear()
        else:
            self._untracked.pop(owner, None)

    def user_nodes(self, s: Session, mirror: Mirror, owner: str) -> int:
        """Nodes of ``owner``'s unfinished workflows, as committed so far in this transaction."""
        untracked = self._untracked.get(owner)
        if untracked is None:
            ids = s.execute(select(Workflow.id).join(User, User.id == Workflow.owner_id)
                            .where(User.name == owner, Workflow.state.in_(_UNFINISHED))).scalars().all()
            others = [i for i in ids if i not in mirror.workflows]
            untracked = 0
            for start in range(0, len(others), 1000):  # SQLite allows 32,766 parameters per statement
                untracked += s.execute(select(func.count()).select_from(Node).where(
                    Node.workflow_id.in_(others[start:start + 1000]), Node.kind != "member")).scalar_one()
            self._untracked[owner] = untracked
        return mirror.owner_nodes[owner] + untracked

    def check_submission(self, s: Session, mirror: Mirror, owner: str, nodes: int) -> None:
        """Raise LimitExceeded when storing a workflow of ``nodes`` (after static expansion) would take
        ``owner`` past ``[limits] max_nodes_per_user``."""
        most = self.limits.max_nodes_per_user if self.limits is not None else 0
        if not most:
            return
        total = self.user_nodes(s, mirror, owner) + nodes
        if total > most:
            raise LimitExceeded(f"a workflow of {nodes:,} nodes would bring the unfinished workflows of user "
                                f"{owner} to {total:,} nodes, limit {most:,} ([limits] max_nodes_per_user)")

    def refuse_spawn(self, s: Session, mirror: Mirror, node: MNode) -> str | None:
        """Why the fragment ``node`` spawned may not be added (None: it may), as for an expansion: the
        workflow's nodes against ``max_nodes``, its owner's against ``max_nodes_per_user``, the fragment's
        sweeps expanded statically."""
        if self.limits is None or node.spawn is None:
            return None
        adding = expanded_node_count(WorkflowSpec("spawn", nodes_from_data(node.spawn["nodes"])))
        return self._refuse(s, mirror, node, adding, f"node '{node.path}': spawning {adding:,} nodes")

    def refuse_expansion(self, s: Session, mirror: Mirror, sweep: MNode, members: int) -> str | None:
        """Why ``sweep`` may not expand into ``members`` members (None: it may), checked before anything is
        written: the workflow's nodes against ``max_nodes``, its owner's against ``max_nodes_per_user``."""
        if self.limits is None:
            return None
        spec = sweep.wf.templates[sweep.template]
        assert isinstance(spec, SweepSpec)
        adding = members * body_node_count(spec)
        return self._refuse(s, mirror, sweep, adding, f"parameterized node '{sweep.path}': expanding {members:,} members")

    def _refuse(self, s: Session, mirror: Mirror, sweep: MNode, adding: int, who: str) -> str | None:
        assert self.limits is not None
        total, most = sweep.wf.size + adding, self.limits.max_nodes
        if total > most:
            return f"{who} would make {total:,} nodes, limit {most:,} ([limits] max_nodes)"
        most = self.limits.max_nodes_per_user
        if most:
            total = self.user_nodes(s, mirror, sweep.wf.owner) + adding
            if total > most:
                return (f"{who} would bring the unfinished workflows of user {sweep.wf.owner} to {total:,} nodes, "
                        f"limit {most:,} ([limits] max_nodes_per_user)")
        return None
