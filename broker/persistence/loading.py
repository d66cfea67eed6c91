"""Loading a workflow from its rows into the writer's mirror: what a restarted broker, or a change to a
workflow the writer does not hold, starts from. Attempts found in flight are handed back for recovery
(adopted, or killed when the workflow's cancel was asked before the last broker stopped)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.description.model import WorkflowSpec
from broker.errors import BrokerError
from broker.persistence.changes import InFlight, ReadyNode
from broker.persistence.mirror import Mirror, MNode, MWorkflow
from broker.persistence.models import Dependency, Node, User, Workflow
from broker.persistence.quota import NodeQuota
from broker.persistence.writeset import WriteSet
from broker.states import IN_FLIGHT, NodeState

NODES = Node.__table__


def load_workflow(s: Session, mirror: Mirror, quota: NodeQuota, workflow_id: int, batch: WriteSet,
                  spec: WorkflowSpec | None = None) -> MWorkflow:
    """Load a workflow into the writer's mirror (idempotent), noting its attempts in flight for recovery.

    ``spec``: its plan decoded already (a workflow just submitted), None: decoded from its row."""
    wf = mirror.workflows.get(workflow_id)
    if wf is not None:
        return wf
    wt = Workflow.__table__
    row = s.execute(select(wt).where(wt.c.id == workflow_id)).one_or_none()
    if row is None:
        raise BrokerError(f"no workflow with id {workflow_id}")
    owner = s.execute(select(User.name).where(User.id == row.owner_id)).scalar_one()
    nodes = s.execute(select(NODES.c.id, NODES.c.path, NODES.c.template, NODES.c.kind, NODES.c.parent_id,
                             NODES.c.member_index, NODES.c.bindings, NODES.c.state, NODES.c.priority,
                             NODES.c.attempt, NODES.c.retries, NODES.c.members, NODES.c.spawn)
                      .where(NODES.c.workflow_id == workflow_id)).all()
    dt_ = Dependency.__table__
    edges = s.execute(select(dt_.c.parent_id, dt_.c.child_id)
                      .join(NODES, NODES.c.id == dt_.c.child_id)
                      .where(NODES.c.workflow_id == workflow_id)).all()
    wf = mirror.add_workflow(row, owner, nodes, edges, batch, spec=spec)
    quota.forget(owner)  # its nodes were counted as untracked, if they were counted
    batch.tracked.append(wf)
    batch.touched[wf.id] = wf
    # groups (expanded sweeps, members) run while their children do: they are no attempts to recover
    flying = [r.id for r in nodes
              if NodeState(r.state) in IN_FLIGHT and not mirror.nodes[r.id].is_group]
    if wf.cancel_requested:
        # cancelled by a broker that stopped before its attempts ended: kill them once found again
        batch.kill.extend((node_id, mirror.nodes[node_id].attempt) for node_id in flying)
    if flying:
        extra = {r.id: (r.workdir, r.job_id, r.host) for r in s.execute(
            select(NODES.c.id, NODES.c.workdir, NODES.c.job_id, NODES.c.host).where(NODES.c.id.in_(flying)))}
        for node_id in flying:
            node = mirror.nodes[node_id]
            workdir, job_id, host = extra[node_id]
            batch.resume.append(InFlight(ready_node(node), node.state, workdir, job_id, host, wf.owner))
    return wf


def ready_node(n: MNode) -> ReadyNode:
    """What the scheduler needs of a node to queue it."""
    return ReadyNode(node_id=n.id, workflow_id=n.wf.id, kind=n.kind, path=n.path,  # type: ignore[arg-type]
                     template=n.template, priority=n.priority, attempt=n.attempt, bindings=n.all_bindings(),
                     member_index=n.member_index)
