"""Every attempt of every node: what the writer records with a node's transitions, and the reads of it.

A node row holds only its current attempt. The writer also keeps one ``attempts`` row per attempt, in the
same transaction as the transitions that make it: the launch intent inserts it (``number`` is the node's new
attempt counter), the start fills in job id, host and work directory, the end its exit code, outcome and
message. A broker that recovers an attempt (adopted, or started once after a crash) moves the node within
the same attempt number, so it updates the same row: an attempt is never counted twice.

Reads for the CLI, the SOAP API, archives and the dashboard: :func:`attempts_of`, :func:`attempts_by_node`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.persistence.models import Attempt
from broker.states import IN_FLIGHT, NodeState

if TYPE_CHECKING:
    from broker.persistence.graph import MNode
    from broker.persistence.writeset import WriteSet

#: node columns an attempt row copies when a transition sets them
COPIED = ("host", "job_id", "workdir", "started_at", "exit_code")
#: the outcome of an attempt that moves its node to these states
OUTCOMES = {NodeState.SUCCEEDED: "succeeded", NodeState.FAILED: "failed", NodeState.RETRY_WAIT: "failed",
            NodeState.CANCELLED: "cancelled"}
#: the row's columns, in the order the writer inserts them
COLUMNS = ("node_id", "workflow_id", "template", "number", "host", "account", "job_id", "workdir", "queued_at",
           "started_at", "finished_at", "exit_code", "outcome", "message")
#: node ids per IN list when reading the attempts of many nodes
READ_CHUNK = 500


def account_of(host: str | None) -> str | None:
    """The account an attempt ran under, when its host says so (``login@host`` once it ran remotely)."""
    if host and "@" in host:
        return host.split("@", 1)[0][:64] or None
    return None


def record(batch: WriteSet, node: MNode, old: NodeState, new: NodeState, cols: dict[str, Any],
           new_attempt: bool) -> None:
    """Record in ``batch`` what a node's transition means for its attempts (called by the mirror's move)."""
    if node.is_group:
        return
    if new_attempt:
        row = {c: cols.get(c) for c in COPIED}
        row["queued_at"] = batch.now
        batch.attempt(node, row, new=True)
        return
    if old not in IN_FLIGHT:  # waiting, ready, retry_wait or ended: no attempt of this node is open
        return
    row = {c: cols[c] for c in COPIED if c in cols}
    outcome = OUTCOMES.get(new)
    if outcome is not None:
        row["finished_at"] = batch.now
        row["outcome"] = outcome
        row["message"] = cols.get("message")
    if row:
        batch.attempt(node, row, new=False)


def insert_row(node: MNode, number: int, cols: dict[str, Any]) -> tuple[Any, ...]:
    """The values of a new row, in :data:`COLUMNS` order."""
    values = {"node_id": node.id, "workflow_id": node.wf.id, "template": node.template, "number": number,
              "account": account_of(cols.get("host")), **cols}
    return tuple(values.get(c) for c in COLUMNS)


def update_columns(cols: dict[str, Any]) -> dict[str, Any]:
    """The columns an update sets (the account follows the host)."""
    if "host" in cols:
        return {**cols, "account": account_of(cols["host"])}
    return cols


# ------------------------------------------------------------------------------------------------ reads

def attempts_of(s: Session, node_id: int) -> list[Attempt]:
    """Every attempt of one node, oldest first."""
    return list(s.scalars(select(Attempt).where(Attempt.node_id == node_id).order_by(Attempt.number)))


def attempts_by_node(s: Session, node_ids: Iterable[int]) -> dict[int, list[Attempt]]:
    """node id -> its attempts, oldest first (nodes without attempts are left out)."""
    ids: Sequence[int] = sorted(set(node_ids))
    out: dict[int, list[Attempt]] = {}
    for start in range(0, len(ids), READ_CHUNK):
        chunk = ids[start:start + READ_CHUNK]
        for row in s.scalars(select(Attempt).where(Attempt.node_id.in_(chunk))
                             .order_by(Attempt.node_id, Attempt.number)):
            out.setdefault(row.node_id, []).append(row)
    return out


def attempts_of_workflow(s: Session, workflow_id: int) -> dict[int, list[Attempt]]:
    """node id -> its attempts, for every node of a workflow (one indexed read)."""
    out: dict[int, list[Attempt]] = {}
    for row in s.scalars(select(Attempt).where(Attempt.workflow_id == workflow_id)
                         .order_by(Attempt.node_id, Attempt.number)):
        out.setdefault(row.node_id, []).append(row)
    return out
