"""The submission controller: the scheduler.

It keeps the ready queue, ordered by workflow priority, then node priority, then age (higher priorities
first), and starts nodes while slots are free: a broker-wide limit, a per-user limit and each workflow's
``maxInFlight``, so one user's big sweep cannot starve everyone else. Parameterized nodes take no slot:
they are expanded as soon as they are ready. It also owns the retry timers and applies control commands
(cancel, restart) left in the database by other processes.

The writer tells it what was committed (:class:`~broker.persistence.changes.Committed`): only nodes that
became ready arrive here, so scheduling never rescans a workflow.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import Counter, deque
from typing import Any

import pykka

from broker.actions import Expand, Failed, Launch, NodeRef, PollControl
from broker.controllers.base import Controller
from broker.controllers.messages import StageInRequest, Tick
from broker.description.model import NodeSpec
from broker.persistence import changes as c
from broker.states import IN_FLIGHT, WORKFLOW_TERMINAL, NodeState
from broker.workers.context import WorkerContext
from broker.workers.pool import WorkerPool

log = logging.getLogger(__name__)
N = NodeState


class WorkflowSlots:
    __slots__ = ("info", "in_flight", "parked")

    def __init__(self, info: c.WorkflowInfo):
        self.info = info
        self.in_flight = 0
        #: ready nodes held back by the workflow's maxInFlight
        self.parked: deque[c.ReadyNode] = deque()


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
        self.queued: dict[int, c.ReadyNode] = {}
        self.in_flight = 0
        self.user_in_flight: Counter[str] = Counter()
        self.user_parked: dict[str, deque[c.ReadyNode]] = {}
        self.workflows: dict[int, WorkflowSlots] = {}
        self.timers: list[tuple[float, int, int]] = []
        self.intents: dict[int, NodeRef] = {}
        self.control_after = 0
        self.control_busy = False
        self.next_control = 0.0

    # ------------------------------------------------------------------------------- from the writer

    def on_committed(self, msg: c.Committed) -> None:
        for info in msg.tracked:
            if info.workflow_id not in self.workflows:
                slots = self.workflows[info.workflow_id] = WorkflowSlots(info)
                slots.in_flight = info.in_flight
                self.in_flight += info.in_flight
                self.user_in_flight[info.owner] += info.in_flight
        for m in msg.moved:
            if m.old in IN_FLIGHT and m.new not in IN_FLIGHT:
                self._release(m.workflow_id)
            if m.new is N.RETRY_WAIT and m.retry_at is not None:
                heapq.heappush(self.timers, (m.retry_at.timestamp(), m.node_id, m.attempt))
            if m.old is N.READY and m.new is not N.READY:
                self.queued.pop(m.node_id, None)
                self.intents.pop(m.node_id, None)
        for ready in msg.ready:
            if ready.workflow_id not in self.workflows:
                continue
            if ready.kind == "sweep":
                self.dispatch(Expand(self._ref(ready, ready.attempt)))
            elif ready.node_id not in self.queued:
                self._queue(ready)
        for workflow_id, state in msg.workflows:
            if state in WORKFLOW_TERMINAL:
                self._forget(workflow_id)
        self._fill()

    def on_rejected(self, msg: c.Rejected) -> None:
        change = msg.change
        if isinstance(change, c.Transition):
            ref = self.intents.pop(change.node_id, None)
            if ref is not None:
                self._release(ref.workflow_id)
                self._fill()
        log.debug("change rejected: %s", msg.reason)

    # ----------------------------------------------------------------------------------- scheduling

    def _ref(self, ready: c.ReadyNode, attempt: int) -> NodeRef:
        slots = self.workflows[ready.workflow_id]
        return NodeRef(node_id=ready.node_id, workflow_id=ready.workflow_id, workflow_global_id=slots.info.global_id,
                       path=ready.path, template=ready.template, attempt=attempt, bindings=ready.bindings,
                       member_index=ready.member_index)

    def _queue(self, ready: c.ReadyNode) -> None:
        slots = self.workflows[ready.workflow_id]
        self.queued[ready.node_id] = ready
        heapq.heappush(self.heap, (-slots.info.priority, -ready.priority, next(self.seq), ready.node_id))

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
            self._start(ready, slots)

    def _start(self, ready: c.ReadyNode, slots: WorkflowSlots) -> None:
        ref = self._ref(ready, ready.attempt + 1)
        spec = self.ctx.plans.get(ready.workflow_id).templates[ready.template]
        slots.in_flight += 1
        self.in_flight += 1
        self.user_in_flight[slots.info.owner] += 1
        self.intents[ready.node_id] = ref
        if isinstance(spec, NodeSpec) and spec.stage_in:
            to, then = N.STAGING_IN, (self.peers["staging"], StageInRequest(ref))
        else:
            to, then = N.QUEUED, self.after_commit(Launch(ref))
        self.writer.tell(c.Transition(node_id=ready.node_id, to=to, actor=self.NAME, attempt=ready.attempt,
                                      new_attempt=True, then=then, reply_to=self.actor_ref))

    def _release(self, workflow_id: int) -> None:
        self.in_flight -= 1
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
        for node_id in [i for i, r in self.queued.items() if r.workflow_id == workflow_id]:
            del self.queued[node_id]
        self.ctx.plans.forget(workflow_id)

    # ------------------------------------------------------------------------------------ expansion

    def expanded(self, action: Expand, change: c.Expansion) -> None:
        self.writer.tell(change)

    def expand_failed(self, action: Expand, failed: Failed) -> None:
        ref = action.node
        self.writer.tell(c.Transition(node_id=ref.node_id, to=N.FAILED, actor=self.NAME,
                                      message=f"expansion failed: {failed.error}"))

    # ---------------------------------------------------------------------------------- timers, control

    def on_tick(self, msg: Tick) -> None:
        while self.timers and self.timers[0][0] <= msg.now:
            _, node_id, attempt = heapq.heappop(self.timers)
            self.writer.tell(c.Transition(node_id=node_id, to=N.READY, actor=self.NAME, attempt=attempt,
                                          message="retrying"))
        if not self.control_busy and msg.now >= self.next_control:
            self.control_busy = True
            self.next_control = msg.now + self.control_interval
            self.dispatch(PollControl(self.control_after))

    def controls(self, action: PollControl, rows: list[Any]) -> None:
        self.control_busy = False
        for control_id, command, workflow_id, node_ids, actor, error in rows:
            self.control_after = max(self.control_after, control_id)
            if not error and not self.ctx.all_workflows and workflow_id not in self.workflows:
                # `broker run` runs its own workflow only; taking another on would tie it to this process
                error = "the running broker (broker run) only runs its own workflow; wait for it or use broker serve"
            if error:
                self.writer.tell(c.MarkControl(control_id, f"error: {error}"))
                continue
            if command == "cancel":
                change: Any = (c.CancelWorkflow(workflow_id, actor) if node_ids is None
                               else c.CancelNodes(tuple(node_ids), actor))
            else:
                change = c.Restart(workflow_id, actor, None if node_ids is None else tuple(node_ids))
            self.writer.tell(change)
            self.writer.tell(c.MarkControl(control_id, "applied"))

    def controls_failed(self, action: PollControl, failed: Failed) -> None:
        self.control_busy = False
        log.warning("could not read control commands: %s", failed.error)

    HANDLERS = {c.Committed: on_committed, c.Rejected: on_rejected, Tick: on_tick}
    ON_DONE = {Expand: expanded, PollControl: controls}
    ON_FAILED = {Expand: expand_failed, PollControl: controls_failed}

