"""The store: applies changes to the mirror and commits them, with their events and outbox rows, at once.

Used by the writer actor (one thread, one connection) and, when no broker is running, directly by
commands such as ``broker cancel``. A batch of changes becomes one transaction: either every change in it
is committed with all its consequences and events, or none is. When a commit fails for a reason other
than a passing database fault, the affected workflows are reloaded from the database and the changes are
applied one by one, so one bad change cannot block the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from broker.crashpoints import crash_point
from broker.description.checks import expanded_node_count
from broker.errors import BrokerError, LeaseLost
from broker.events.types import EventType
from broker.persistence import acted, loading, removal, requests, settled, spawning
from broker.persistence.changes import (Accepted, AfterIntents, CancelNodes, CancelWorkflow, DeleteWorkflows,
                                        Expansion, MarkControl, Note, Rejected, Reported, Restart, Submit, Track,
                                        Transition, WorkflowSummary)
from broker.persistence.mirror import Mirror, MNode, MWorkflow
from broker.persistence.models import Node
from broker.persistence.outcome import Admit, Consult, Outcome, committed, frees_or_readies, merge
from broker.persistence.quota import NodeQuota
from broker.persistence.rawsql import RawWriter
from broker.persistence.timings import CommitTimes
from broker.persistence.writeset import WriteSet
from broker.states import TERMINAL, WORKFLOW_TERMINAL, NodeState, WorkflowState, check_transition

if TYPE_CHECKING:
    from broker.persistence.lease import Lease

log = logging.getLogger(__name__)
NODES = Node.__table__
#: top-level nodes beyond which a submitted workflow is tracked in a commit of its own (Store._submit)
TRACK_LATER_NODES = 5000

#: seconds between attempts to commit while the database is unreachable (doubles up to the cap)
RETRY_FIRST, RETRY_CAP = 0.05, 5.0
#: ready nodes in one batch beyond which the scheduler hears of them after the commit only (its answer
#: would take longer than the writer waits)
ADMIT_MAX_READY = 1000


class Store:
    """Applies changes; the only code that writes node and workflow state."""

    def __init__(self, session_factory: sessionmaker[Session], *, limits: Any = None,
                 guard: Lease | None = None, publishing: bool = True, work_root: str = ""):
        self.session_factory = session_factory
        self.guard = guard  #: checked in each transaction before it commits (broker.persistence.rawsql.write)
        self.publishing = publishing  #: a bus is configured ([events] url); without one, no outbox rows
        self.work_root = work_root or None  #: recorded on each stored workflow: where a resume creates attempts
        self.mirror = Mirror()
        self.limits = limits
        self.quota = NodeQuota(limits)
        #: how long the writer's commits take (observed by the writer, read by the API's /metrics)
        self.commit_times = CommitTimes()
        self._stopping: set[int] = set()
        self._rawsql: RawWriter | None = None

    def _sql(self, s: Session) -> RawWriter:
        if self._rawsql is None:
            self._rawsql = RawWriter(s.get_bind().dialect.name)
        return self._rawsql

    # ---------------------------------------------------------------------------------------- commit

    def commit(self, changes: list[Any], admit: Admit | None = None) -> Outcome:
        """Apply and commit a batch of changes; never raises for one bad change.

        ``admit`` (the writer's): asked at most once, inside the transaction, for the launch intents its ready
        nodes and freed slots allow; they join ``changes``, so that a retry commits them too."""
        consult = Consult(admit)
        delay = RETRY_FIRST
        while True:
            try:
                return self._commit(changes, consult)
            except LeaseLost:  # nothing was committed, nor may be: not a fault to retry or split
                self._reload(changes)
                raise
            except OperationalError as exc:  # unreachable or locked: the same batch will work later
                level = logging.DEBUG if delay == RETRY_FIRST else logging.WARNING  # one cut: a quiet reconnect
                log.log(level, "database unavailable, retrying in %.2f s: %s", delay, exc.orig)
                self._reload(changes)
                time.sleep(delay)  # the writer has nothing else it could do meanwhile
                delay = min(RETRY_CAP, delay * 2)
            except Exception:
                if len(changes) == 1:
                    log.exception("change could not be committed: %r", changes[0])
                    self._reload(changes)
                    out = Outcome()
                    self._reject(out, changes[0], "internal error (see the broker log)")
                    return out
                log.warning("batch of %d changes failed; applying them one by one", len(changes))
                self._reload(changes)
                merged = Outcome()
                for change in changes:
                    one = self.commit([change])
                    merged = merge(merged, one)
                merged.committed = dataclasses.replace(merged.committed, admitted=consult.token)
                return merged

    def _commit(self, changes: list[Any], consult: Consult | None = None) -> Outcome:
        out = Outcome()
        batch = WriteSet(publishing=self.publishing)
        with self.session_factory.begin() as s:
            for change in changes:
                self._apply(s, change, batch, out)
            self._insert_created(s, batch)
            self._stop_failing(batch)
            self._derive(batch)
            if consult is not None and consult.admit is not None:
                self._consult(s, consult, changes, batch, out)
            batch.counts()
            self._sql(s).write(s, batch, self.guard)
            if batch.spawned:
                crash_point("spawn")
            elif batch.expanded:
                crash_point("expansion")
        for wf in [w for w in batch.touched.values() if w.state in WORKFLOW_TERMINAL]:
            # finished workflows leave the mirror (also one loaded for a command, e.g. cancel of an ended one)
            self.mirror.drop(wf)
            self._stopping.discard(wf.id)
            out.freed += wf.total_nodes
        self._notify(batch, out, consult.token if consult is not None else None)
        return out

    def _consult(self, s: Session, consult: Consult, changes: list[Any], batch: WriteSet, out: Outcome) -> None:
        """Ask the scheduler for the launch intents this batch makes possible, and apply them in it."""
        if batch.tracked or batch.resume or len(batch.ready) > ADMIT_MAX_READY:
            # a workflow tracked by this batch: the scheduler reads its plan, not committed yet; adopted attempts
            # are counted once, after the commit; a huge expansion: queued after it
            return
        provisional = committed(batch)
        if not frees_or_readies(provisional):
            return
        admit, consult.admit = consult.admit, None
        extra, consult.token = admit(provisional)  # type: ignore[misc]
        changes.extend(extra)
        for change in extra:
            self._apply(s, change, batch, out)
        if extra:
            self._derive(batch)

    def _reload(self, changes: list[Any]) -> None:
        """Forget in-memory effects of a failed commit: drop the workflows it touched (reloaded on demand)."""
        for wf in list(self.mirror.workflows.values()):
            self.mirror.drop(wf)
        self._stopping.clear()
        self.quota.forget()

    # ----------------------------------------------------------------------------------------- apply

    def _apply(self, s: Session, change: Any, batch: WriteSet, out: Outcome) -> None:
        try:
            handler = _HANDLERS[type(change)]
        except KeyError:
            raise TypeError(f"not a change: {change!r}") from None
        try:
            handler(self, s, change, batch, out)
        except BrokerError as exc:
            self._reject(out, change, str(exc), exc)

    def _reject(self, out: Outcome, change: Any, reason: str, error: BrokerError | None = None) -> None:
        log.debug("rejected %r: %s", change, reason)
        reply_to = getattr(change, "reply_to", None)
        if reply_to is not None:
            out.replies.append((reply_to, Rejected(change, reason, error)))

    def _node(self, s: Session, node_id: int, batch: WriteSet, change: Any = None) -> MNode:
        node = self.mirror.nodes.get(node_id)
        if node is None:
            settled.refuse(s, change, node_id)  # a node of a finished workflow: not loaded again just to say no
            wf_id = s.execute(select(NODES.c.workflow_id).where(NODES.c.id == node_id)).scalar()
            if wf_id is None:
                raise BrokerError(f"no node with id {node_id}")
            self.track(s, wf_id, batch)
            node = self.mirror.nodes.get(node_id)
            if node is None:
                raise BrokerError(f"node {node_id} belongs to a finished workflow")
        return node

    def _transition(self, s: Session, ch: Transition, batch: WriteSet, out: Outcome) -> None:
        node = self._node(s, ch.node_id, batch, ch)
        if ch.attempt is not None and ch.attempt != node.attempt:
            raise BrokerError(f"stale report for attempt {ch.attempt} of '{node.path}' (now {node.attempt})")
        if ch.attempt is not None and node.kind == "node" and node.is_group:
            # its attempt's result was applied (it spawned): a second copy must not end the group it became
            raise BrokerError(f"stale report for attempt {ch.attempt} of '{node.path}' (its result spawned nodes)")
        fields = dict(ch.fields)
        to = ch.to
        if to is NodeState.FAILED and ch.retryable:
            to = self._retry_or_fail(node, fields, batch, ch.actor)
        if "retries" in fields:
            node.retries = fields["retries"]
        if "spawn" in fields:  # the fragment comes with the result that spawned it (kept through a stage-out)
            node.spawn = fields["spawn"]
        if to is NodeState.SUCCEEDED and spawning.pending(node):
            refusal = self.quota.refuse_spawn(s, self.mirror, node)
            if refusal is None:
                batch.expanded.append((node, spawning.spawn(self.mirror, node, batch, actor=ch.actor,
                                                            message=ch.message, fields=fields)))
                if ch.then is not None:
                    out.followups.append(ch.then)
                return
            to, fields["spawn"], node.spawn = NodeState.FAILED, None, None
            ch = dataclasses.replace(ch, message=refusal)
        self.mirror.transition(node, to, batch, actor=ch.actor, message=ch.message, fields=fields,
                               new_attempt=ch.new_attempt)
        if ch.then is not None:
            out.followups.append(ch.then)

    def _after_intents(self, s: Session, ch: AfterIntents, batch: WriteSet, out: Outcome) -> None:
        kept = []
        for node_id, attempt in ch.nodes:
            try:
                node = self._node(s, node_id, batch, ch)
            except BrokerError:
                continue
            if node.state is NodeState.QUEUED and node.attempt == attempt:
                kept.append(node_id)
        if len(kept) == len(ch.nodes):
            out.followups.append(ch.then)
        elif kept:
            ref, message = ch.then
            out.followups.append((ref, message.only(frozenset(kept))))

    def _retry_or_fail(self, node: MNode, fields: dict[str, Any], batch: WriteSet, actor: str) -> NodeState:
        """Turn a failed attempt into a retry when the node's policy has retries left."""
        spec = node.wf.templates[node.template]
        retry = getattr(spec, "execution", None) and spec.execution.retry  # type: ignore[union-attr]
        if not retry or node.retries >= retry.count:
            return NodeState.FAILED
        # checked before the event: a late report for an ended node is refused without announcing a retry
        check_transition(node.state, NodeState.RETRY_WAIT, group=node.is_group)
        delay = retry.delay(node.retries + 1)
        fields["retries"] = node.retries + 1
        fields["retry_at"] = batch.now + dt.timedelta(seconds=delay)
        batch.event(node.wf, EventType.NODE_RETRY, actor=actor, node=node,
                    message=f"attempt {node.attempt} failed; retry {node.retries + 1} of {retry.count} in {delay:g} s",
                    properties={"attempt": node.attempt, "delay": delay, "retry": node.retries + 1})
        return NodeState.RETRY_WAIT

    def _reported(self, s: Session, ch: Reported, batch: WriteSet, out: Outcome) -> None:
        node = self._node(s, ch.node_id, batch, ch)
        if ch.attempt != node.attempt or node.state in TERMINAL:
            raise BrokerError(f"stale report for attempt {ch.attempt} of '{node.path}'")
        if ch.progress is not None and node.last_progress != (node.attempt, *ch.progress):
            node.last_progress = (node.attempt, *ch.progress)
            percent, text = ch.progress
            batch.update(node, {"progress": percent})
            batch.event(node.wf, EventType.NODE_PROGRESS, actor=ch.actor, node=node, message=text,
                        properties={"percent": percent, "attempt": node.attempt})
        for name, value in ch.outputs:
            batch.event(node.wf, EventType.NODE_OUTPUT, actor=ch.actor, node=node, message=name,
                        properties={"name": name, "value": value, "attempt": node.attempt})

    def _note(self, s: Session, ch: Note, batch: WriteSet, out: Outcome) -> None:
        wf = None
        node = None
        if ch.node_id is not None:
            node = self._node(s, ch.node_id, batch)
            wf = node.wf
        elif ch.workflow_id is not None:
            wf = self._workflow(s, ch.workflow_id, batch)
        batch.event(wf, EventType(ch.type), actor=ch.actor, node=node, message=ch.message, properties=ch.properties)

    def _expansion(self, s: Session, ch: Expansion, batch: WriteSet, out: Outcome) -> None:
        sweep = self._node(s, ch.node_id, batch, ch)
        if sweep.state is NodeState.READY:  # otherwise the mirror refuses the expansion itself
            refusal = self.quota.refuse_expansion(s, self.mirror, sweep, len(ch.members))
            if refusal is not None:
                self.mirror.transition(sweep, NodeState.FAILED, batch, actor=ch.actor, message=refusal)
                return
        created = self.mirror.expand(sweep, ch.members, batch, actor=ch.actor)
        batch.expanded.append((sweep, created))

    def _cancel_workflow(self, s: Session, ch: CancelWorkflow, batch: WriteSet, out: Outcome) -> None:
        wf = self._workflow(s, ch.workflow_id, batch)
        wf.cancel_requested = True
        batch.workflow_update(wf, {"cancel_requested": True})
        self.mirror.cancel_nodes([n for n in wf.nodes if n.parent is None], batch, actor=ch.actor)
        acted.record(batch, wf, None, "cancel", ch.actor)
        if ch.reply_to is not None:
            out.replies.append((ch.reply_to, Accepted(wf.id, wf.global_id)))

    def _cancel_nodes(self, s: Session, ch: CancelNodes, batch: WriteSet, out: Outcome) -> None:
        nodes = [self._node(s, i, batch) for i in ch.node_ids]
        self.mirror.cancel_nodes(nodes, batch, actor=ch.actor)
        if nodes:
            acted.record(batch, nodes[0].wf, nodes, "cancel", ch.actor)
            if ch.reply_to is not None:
                out.replies.append((ch.reply_to, Accepted(nodes[0].wf.id, nodes[0].wf.global_id)))

    def _restart(self, s: Session, ch: Restart, batch: WriteSet, out: Outcome) -> None:
        wf = self._workflow(s, ch.workflow_id, batch)
        targets = None if ch.node_ids is None else [self._node(s, i, batch) for i in ch.node_ids]
        count = self.mirror.restart(wf, targets, batch, actor=ch.actor)
        acted.record(batch, wf, targets, "restart", ch.actor, nodes=count)
        if ch.reply_to is not None:
            out.replies.append((ch.reply_to, Accepted(wf.id, wf.global_id)))

    def _submit(self, s: Session, ch: Submit, batch: WriteSet, out: Outcome) -> None:
        from broker.persistence import repository

        owner = repository.ensure_user(s, ch.owner)
        known = ch.request_id is not None and repository.request_known(s, owner, ch.request_id)
        if not known:
            self.quota.check_submission(s, self.mirror, ch.owner, expanded_node_count(ch.spec))
        row = repository.submit_workflow(s, ch.spec, descriptor=ch.descriptor, owner=owner, label=ch.label,
                                         request_id=ch.request_id, experiment_id=ch.experiment_id,
                                         event_level=ch.event_level, priority=ch.priority,
                                         publish_metadata_to=ch.publish_metadata_to, now=batch.now,
                                         publishing=batch.publishing, work_root=self.work_root, origin=ch.origin,
                                         global_id=ch.global_id, plan=ch.plan)
        s.flush()
        resumed = row.id in self.mirror.workflows
        if not resumed and WorkflowState(row.state) not in WORKFLOW_TERMINAL:
            if not known and len(ch.spec.nodes) > TRACK_LATER_NODES:
                # Reading a big workflow back into the mirror takes as long as storing it (some 2 s for 100,000
                # nodes), and every user's changes in this commit wait for both: its tracking goes in a commit
                # of its own, after theirs. (A crash between: the next broker tracks it, as any unfinished one.)
                out.later.append(Track(row.id, spec=ch.spec))
            else:
                # the spec at hand, not its plan decoded again (they are equal: tests/description/
                # test_examples.py); a known request's workflow has its own
                self.track(s, row.id, batch, spec=None if known else ch.spec)
        if ch.reply_to is not None:
            out.replies.append((ch.reply_to, Accepted(row.id, row.global_id, resumed=resumed)))

    def _track(self, s: Session, ch: Track, batch: WriteSet, out: Outcome) -> None:
        wf = self.mirror.workflows.get(ch.workflow_id) or self.track(s, ch.workflow_id, batch, spec=ch.spec)
        if ch.reply_to is not None:
            out.replies.append((ch.reply_to, Accepted(wf.id, wf.global_id, resumed=True)))

    def _mark_control(self, s: Session, ch: MarkControl, batch: WriteSet, out: Outcome) -> None:
        batch.controls.append((ch.control_id, ch.result))

    def _workflow(self, s: Session, workflow_id: int, batch: WriteSet) -> MWorkflow:
        wf = self.mirror.workflows.get(workflow_id)
        return wf if wf is not None else self.track(s, workflow_id, batch)

    def track(self, s: Session, workflow_id: int, batch: WriteSet, spec: Any = None) -> MWorkflow:
        """Load a workflow into the mirror (idempotent); ``spec``: its plan, decoded already."""
        return loading.load_workflow(s, self.mirror, self.quota, workflow_id, batch, spec=spec)

    # ------------------------------------------------------------------------------------------ write

    def _insert_created(self, s: Session, batch: WriteSet) -> None:
        if batch.creations:
            self._sql(s).insert_created(s, batch)
        for sweep, created in batch.expanded:  # a sweep without members ends here too
            self.mirror.start_created(sweep, created, batch)

    def _stop_failing(self, batch: WriteSet) -> None:
        """onFailure="stop": once the workflow's failure constraint is broken, cancel what has not ended."""
        for wf in list(batch.touched.values()):
            if (wf.constraint.on_failure == "stop" and wf.id not in self._stopping
                    and self.mirror.failed_so_far(wf)):
                self._stopping.add(wf.id)
                self.mirror.cancel_nodes([n for n in wf.nodes if n.parent is None], batch,
                                         actor="submission")

    def _derive(self, batch: WriteSet) -> None:
        for wf in list(batch.touched.values()):
            self.mirror.derive(wf, batch)

    # ---------------------------------------------------------------------------------------- notify

    def _notify(self, batch: WriteSet, out: Outcome, admitted: int | None) -> None:
        out.committed = dataclasses.replace(committed(batch), admitted=admitted)
        out.summaries = [WorkflowSummary(wf.id, wf.global_id, wf.state, {s.value: k for s, k in wf.counts.items()
                                                                       if k}) for wf in batch.touched.values()]

_HANDLERS = {
    Transition: Store._transition,
    Reported: Store._reported,
    Note: Store._note,
    Expansion: Store._expansion,
    CancelWorkflow: Store._cancel_workflow,
    CancelNodes: Store._cancel_nodes,
    Restart: Store._restart,
    Submit: Store._submit,
    Track: Store._track,
    MarkControl: Store._mark_control,
    AfterIntents: Store._after_intents,
    DeleteWorkflows: removal.delete_workflows,
    requests.ApplyRequest: requests.apply_request,
}
