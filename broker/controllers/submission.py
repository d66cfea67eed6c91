"""The submission controller: the scheduler.

It keeps the ready queue, ordered by workflow priority, then node priority, then age (higher priorities
first), and starts nodes while slots are free: a broker-wide limit, a per-user limit and each workflow's
``maxInFlight``, so one user's big sweep cannot starve everyone else. Parameterized nodes take no slot:
they are expanded as soon as they are ready. It also owns the retry timers and applies control commands
(cancel, restart) left in the database by other processes.

The writer tells it what was committed (:class:`~broker.persistence.changes.Committed`): only nodes that
became ready arrive here, so scheduling never rescans a workflow. Before committing a transaction that frees
slots or readies nodes, the writer asks it an Admission: the intents it answers join that transaction.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
from collections import Counter, deque
from typing import Any

import pykka

from broker.actions import Expand, Failed, Launch, LaunchBundle, NodeRef, PollControl, StageIn
from broker.controllers.base import Controller
from broker.controllers.messages import Tick
from broker.description.model import NodeSpec, SweepSpec
from broker.errors import ResourceError
from broker.launchers.jobs import array_key
from broker.persistence.changes import (AfterIntents, CancelNodes, CancelWorkflow, Changes, Committed, Expansion,
                                        InFlight, MarkControl, Moved, ReadyNode, Rejected, Restart, Transition,
                                        WorkflowInfo)
from broker.persistence.control import ControlCommand
from broker.persistence.writer import Admission
from broker.states import WORKFLOW_TERMINAL, NodeState
from broker.workers.context import WorkerContext
from broker.workers.pool import WorkerPool

log = logging.getLogger(__name__)
#: queued nodes a finished workflow must leave behind for the scheduler to sweep its queues at once
STALE_SWEEP = 1000


class WorkflowSlots:
    __slots__ = ("info", "in_flight", "parked")

    def __init__(self, info: WorkflowInfo):
        self.info = info
        self.in_flight = 0
        #: ready nodes held back by the workflow's maxInFlight
        self.parked: deque[ReadyNode] = deque()


class SubmissionController(Controller):
    NAME = "submission"

    def __init__(self, writer: pykka.ActorRef[Any], pools: dict[str, WorkerPool], ctx: WorkerContext):
        super().__init__(writer, pools)
        self.ctx = ctx
        engine = ctx.settings.engine
        self.max_in_flight = engine.max_in_flight
        self.max_per_user = engine.max_in_flight_per_user
        self.control_interval = engine.control_interval
        self.heap: list[tuple[int, int, int, int]] = []
        self.seq = itertools.count()
        self.queued: dict[int, ReadyNode] = {}
        self.in_flight = 0
        self.user_in_flight: Counter[str] = Counter()
        self.user_parked: dict[str, deque[ReadyNode]] = {}
        self.workflows: dict[int, WorkflowSlots] = {}
        self.timers: list[tuple[float, int, int]] = []
        self.intents: dict[int, NodeRef] = {}
        #: (workflow id, template) -> its host, or the ResourceError saying why none fits (resolution is pure)
        self.hosts: dict[tuple[int, str], Any] = {}
        #: jobs in flight per host (a bundle of members is one job), and ready nodes waiting for a host slot
        self.host_jobs: Counter[str] = Counter()
        self.host_parked: dict[str, deque[ReadyNode]] = {}
        #: node id -> (host, job key) while in flight; job key -> members of that job still in flight
        self.node_job: dict[int, tuple[str, int]] = {}
        self.job_left: Counter[int] = Counter()
        #: (workflow id, template) -> queued node ids, to gather sweep members into one bundle
        self.by_template: dict[tuple[int, str], deque[int]] = {}
        self.control_after = 0
        self.control_busy = False
        self.next_control = 0.0
        #: while answering an Admission: the changes for the writer's open transaction (None otherwise)
        self.capture: list[Any] | None = None
        #: token of an answered Admission -> the moves counted then, not to be counted again after the commit
        self.admitted: dict[int, frozenset[Moved]] = {}

    # ------------------------------------------------------------------------------- from the writer

    def on_admission(self, msg: Admission) -> None:
        """Count the moves of the writer's open transaction at once; answer with the intents they allow."""
        self.capture = []
        try:
            self.admitted[msg.token] = frozenset(msg.committed.moved)
            self._committed(msg.committed, admitting=True)
        finally:
            captured, self.capture = self.capture, None
            if not msg.answer(captured) and captured:  # the writer stopped waiting: committed next, together
                self.writer.tell(Changes(tuple(captured)))

    def on_committed(self, msg: Committed) -> None:
        counted: frozenset[Moved] = frozenset()
        if msg.admitted is not None:
            counted = self.admitted.pop(msg.admitted, counted)
            for token in [t for t in self.admitted if t < msg.admitted]:  # a commit that failed for good
                del self.admitted[token]
        self._committed(msg, counted=counted)

    def _committed(self, msg: Committed, counted: frozenset[Moved] = frozenset(), admitting: bool = False) -> None:
        for info in msg.tracked:
            # one loaded and still finished (a command on an ended workflow) would never be forgotten
            if info.workflow_id not in self.workflows and info.state not in WORKFLOW_TERMINAL:
                slots = self.workflows[info.workflow_id] = WorkflowSlots(info)
                slots.in_flight = info.in_flight
                self.in_flight += info.in_flight
                self.user_in_flight[info.owner] += info.in_flight
        if msg.resume:
            self._adopt(msg.resume)
        for m in msg.moved:
            if m in counted:
                continue
            if m.frees_slot:
                self._release(m.workflow_id, m.node_id)
            if m.new is NodeState.RETRY_WAIT and m.retry_at is not None:
                heapq.heappush(self.timers, (m.retry_at.timestamp(), m.node_id, m.attempt))
            if m.old is NodeState.READY and m.new is not NodeState.READY:
                self.queued.pop(m.node_id, None)
                self.intents.pop(m.node_id, None)
        for ready in msg.ready:
            if ready.workflow_id not in self.workflows or ready.node_id in self.intents:
                continue
            if ready.kind == "sweep":
                if not admitting:  # its expansion reads what the open transaction has not committed yet
                    self.dispatch(Expand(self._ref(ready, ready.attempt)))
            elif ready.node_id not in self.queued:
                self._queue(ready)
        for workflow_id, state in msg.workflows:
            if state in WORKFLOW_TERMINAL:
                self._forget(workflow_id)
        self._fill()

    def _adopt(self, resumed: tuple[InFlight, ...]) -> None:
        """Attempts a previous broker left in flight hold their host's job slots, like those started here.

        Without this a restarted broker would see every host empty and start up to ``maxJobs`` more jobs
        next to the ones it adopted. Members of one bundle share a job id, and so one slot; so do the tasks
        of one array.
        """
        jobs: dict[tuple[int, str, str], int] = {}
        for flying in resumed:
            host = (flying.host or "localhost").rpartition("@")[2]
            node_id = flying.node.node_id
            job = array_key(flying.job_id or "")
            key = jobs.setdefault((flying.node.workflow_id, host, job), node_id) if job else node_id
            if key not in self.job_left:
                self.host_jobs[host] += 1
            self.job_left[key] += 1
            self.node_job[node_id] = (host, key)

    def on_rejected(self, msg: Rejected) -> None:
        change = msg.change
        if isinstance(change, Transition):
            ref = self.intents.pop(change.node_id, None)
            if ref is not None:
                self._release(ref.workflow_id, change.node_id)
                self._fill()
        log.debug("change rejected: %s", msg.reason)

    # ----------------------------------------------------------------------------------- scheduling

    def _ref(self, ready: ReadyNode, attempt: int, host: str = "localhost") -> NodeRef:
        slots = self.workflows[ready.workflow_id]
        return NodeRef(node_id=ready.node_id, workflow_id=ready.workflow_id, workflow_global_id=slots.info.global_id,
                       path=ready.path, spec_path=ready.template, attempt=attempt, bindings=ready.bindings,
                       member_index=ready.member_index, host=host, owner=slots.info.owner)

    def _queue(self, ready: ReadyNode) -> None:
        slots = self.workflows[ready.workflow_id]
        self.queued[ready.node_id] = ready
        self.by_template.setdefault((ready.workflow_id, ready.template), deque()).append(ready.node_id)
        heapq.heappush(self.heap, (-slots.info.priority, -ready.priority, next(self.seq), ready.node_id))

    def _host(self, ready: ReadyNode) -> Any:
        """The host a node's template runs on, or the ResourceError saying why there is none."""
        key = (ready.workflow_id, ready.template)
        host = self.hosts.get(key)
        if host is None:
            plan = self.ctx.plans.get(ready.workflow_id)
            try:
                host = self.ctx.resources.resolve(plan.spec.resources, plan.templates[ready.template].scheduling,
                                                  node=ready.path)
            except ResourceError as exc:
                host = exc
            self.hosts[key] = host
        return host

    def _fill(self) -> None:
        """Start ready nodes while slots are free."""
        while self.heap and self.in_flight < self.max_in_flight:
            node_id = heapq.heappop(self.heap)[3]
            ready = self.queued.pop(node_id, None)
            if ready is None:
                continue  # cancelled or started meanwhile
            slots = self.workflows.get(ready.workflow_id)
            if slots is None:
                continue
            if slots.info.max_in_flight and slots.in_flight >= slots.info.max_in_flight:
                slots.parked.append(ready)
                continue
            owner = slots.info.owner
            if self.max_per_user and self.user_in_flight[owner] >= self.max_per_user:
                self.user_parked.setdefault(owner, deque()).append(ready)
                continue
            host = self._host(ready)
            if isinstance(host, ResourceError):
                self._change(Transition(node_id=ready.node_id, to=NodeState.FAILED, actor=self.NAME,
                                        attempt=ready.attempt, message=str(host)))
                continue
            limit = self.ctx.resources.max_jobs(host.name)
            if limit and self.host_jobs[host.name] >= limit:
                self.host_parked.setdefault(host.name, deque()).append(ready)
                continue
            more, array = self._bundle(ready, slots, host)
            self._start([ready, *more], slots, host, array)

    def _bundle(self, ready: ReadyNode, slots: WorkflowSlots, host: Any) -> tuple[list[ReadyNode], bool]:
        """Other queued members of the same sweep body to submit with ``ready``, and whether as a job array.

        A sweep with ``bundle="N"`` (N >= 2) puts up to N members in one job that runs them itself; on a
        host that takes arrays any other sweep's members go out as one array (a task each) of up to the
        host's ``maxArraySize``. Either way every member holds its own in-flight slot, and the job one of
        the host's ``maxJobs``.
        """
        plan = self.ctx.plans.get(ready.workflow_id)
        spec = plan.templates[ready.template]
        sweep = plan.templates.get(ready.template.rpartition("/")[0])
        if not host.is_batch or not isinstance(sweep, SweepSpec) or spec.stage_in:
            return [], False
        array = sweep.bundle < 2
        size = host.max_array if array else sweep.bundle
        if size < 2:
            return [], False
        room = [size - 1, self.max_in_flight - self.in_flight - 1]
        if slots.info.max_in_flight:
            room.append(slots.info.max_in_flight - slots.in_flight - 1)
        if self.max_per_user:
            room.append(self.max_per_user - self.user_in_flight[slots.info.owner] - 1)
        wanted, more = min(room), []
        waiting = self.by_template.get((ready.workflow_id, ready.template), deque())
        while waiting and len(more) < wanted:
            other = self.queued.pop(waiting.popleft(), None)
            if other is not None and other.node_id != ready.node_id:
                more.append(other)  # its heap entry is skipped when popped: it is no longer queued
        return more, array

    def _start(self, members: list[ReadyNode], slots: WorkflowSlots, host: Any, array: bool = False) -> None:
        """Commit the launch intents of one job (one node, or a bundle) and have it launched after."""
        spec = self.ctx.plans.get(members[0].workflow_id).templates[members[0].template]
        refs = [self._ref(ready, ready.attempt + 1, host.name) for ready in members]
        job = members[0].node_id
        self.host_jobs[host.name] += 1
        self.job_left[job] = len(members)
        transitions = []
        for ready, ref in zip(members, refs):
            slots.in_flight += 1
            self.in_flight += 1
            self.user_in_flight[slots.info.owner] += 1
            self.intents[ready.node_id] = ref
            self.node_job[ready.node_id] = (host.name, job)
            transitions.append(Transition(node_id=ready.node_id, to=NodeState.QUEUED, actor=self.NAME,
                                          attempt=ready.attempt, new_attempt=True, fields=(("host", host.name),),
                                          reply_to=self.actor_ref))
        if len(refs) > 1:
            # a bundle starts with the members whose intents were committed (another may have been cancelled)
            throttle = host.batch.array_throttle if array and host.batch else 0
            after = AfterIntents(self.after_commit(LaunchBundle(tuple(refs), array, throttle)),
                                 tuple((ref.node_id, ref.attempt) for ref in refs))
            self._change(Changes((*transitions, after)))
            return
        if isinstance(spec, NodeSpec) and spec.stage_in:
            then: Any = self.after_commit(StageIn(refs[0]))
            transitions[0] = dataclasses.replace(transitions[0], to=NodeState.STAGING_IN)
        else:
            then = self.after_commit(Launch(refs[0]))
        # the follow-up rides on the intent: it is told only once the intent is committed
        self._change(dataclasses.replace(transitions[0], then=then))

    def _change(self, change: Any) -> None:
        """A change of the scheduler's: into the writer's open transaction while answering an Admission."""
        if self.capture is None:
            self.writer.tell(change)
        elif isinstance(change, Changes):
            self.capture.extend(change.items)
        else:
            self.capture.append(change)

    def _release(self, workflow_id: int, node_id: int) -> None:
        self.in_flight -= 1
        job = self.node_job.pop(node_id, None)
        if job is not None:
            host, key = job
            self.job_left[key] -= 1
            if self.job_left[key] <= 0:
                del self.job_left[key]
                self.host_jobs[host] -= 1
                waiting = self.host_parked.get(host)
                if waiting:
                    self._queue(waiting.popleft())
        slots = self.workflows.get(workflow_id)
        if slots is None:
            return
        slots.in_flight -= 1
        owner = slots.info.owner
        self.user_in_flight[owner] -= 1
        if slots.parked:
            self._queue(slots.parked.popleft())
        parked = self.user_parked.get(owner)
        if parked:
            ready = parked.popleft()
            if ready.workflow_id in self.workflows:
                self._queue(ready)

    def _forget(self, workflow_id: int) -> None:
        slots = self.workflows.pop(workflow_id, None)
        if slots is None:
            return
        self.in_flight -= slots.in_flight
        self.user_in_flight[slots.info.owner] -= slots.in_flight
        gone = [i for i, r in self.queued.items() if r.workflow_id == workflow_id]
        for node_id in gone:
            del self.queued[node_id]
        if len(gone) >= STALE_SWEEP:
            # a big workflow ended with nodes still queued (a cancelled 100,000-node one): its entries in the
            # heap and the parked queues would stay until popped, holding memory; small ones are left to that
            self.heap = [entry for entry in self.heap if entry[3] in self.queued]
            heapq.heapify(self.heap)
            for queues in (self.user_parked, self.host_parked):
                for name, parked in queues.items():
                    queues[name] = deque(r for r in parked if r.workflow_id != workflow_id)
        for key in [k for k in self.by_template if k[0] == workflow_id]:
            del self.by_template[key]
        for key in [k for k in self.hosts if k[0] == workflow_id]:
            del self.hosts[key]
        self.ctx.plans.forget(workflow_id)

    # ------------------------------------------------------------------------------------ expansion

    def expanded(self, action: Expand, change: Expansion) -> None:
        self.writer.tell(change)

    def expand_failed(self, action: Expand, failed: Failed) -> None:
        ref = action.node
        self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME,
                                    message=f"expansion failed: {failed.error}"))

    # ---------------------------------------------------------------------------------- timers, control

    def on_tick(self, msg: Tick) -> None:
        while self.timers and self.timers[0][0] <= msg.now:
            _, node_id, attempt = heapq.heappop(self.timers)
            self.writer.tell(Transition(node_id=node_id, to=NodeState.READY, actor=self.NAME, attempt=attempt,
                                        message="retrying"))
        if not self.control_busy and msg.now >= self.next_control:
            self.control_busy = True
            self.next_control = msg.now + self.control_interval
            self.dispatch(PollControl(self.control_after))

    def controls(self, action: PollControl, rows: list[ControlCommand]) -> None:
        self.control_busy = False
        for row in rows:
            control_id, workflow_id, node_ids, actor, error = (row.control_id, row.workflow_id, row.node_ids,
                                                               row.actor, row.error)
            self.control_after = max(self.control_after, control_id)
            if not error and not self.ctx.all_workflows and workflow_id not in self.workflows:
                # `broker run` runs its own workflow only; taking another on would tie it to this process
                error = "the running broker (broker run) only runs its own workflow; wait for it or use broker serve"
            if error:
                self.writer.tell(MarkControl(control_id, f"error: {error}"))
                continue
            if row.command == "cancel":
                change: Any = (CancelWorkflow(workflow_id, actor) if node_ids is None
                               else CancelNodes(tuple(node_ids), actor))
            else:
                change = Restart(workflow_id, actor, None if node_ids is None else tuple(node_ids))
            self.writer.tell(change)
            self.writer.tell(MarkControl(control_id, "applied"))

    def controls_failed(self, action: PollControl, failed: Failed) -> None:
        self.control_busy = False
        log.warning("could not read control commands: %s", failed.error)

    HANDLERS = {Committed: on_committed, Admission: on_admission, Rejected: on_rejected, Tick: on_tick}
    ON_DONE = {Expand: expanded, PollControl: controls}
    ON_FAILED = {Expand: expand_failed, PollControl: controls_failed}

