"""The monitoring controller: follows every started attempt until its result is committed.

It hears from launchers when an attempt ends (an exit seen at once, not by polling), has a poll worker
read the result, and asks the writer for the transition: succeeded (or staging out), failed (retried if
the node's policy allows), or cancelled. While attempts run it reads their progress and output reports
periodically. An elf that pushes (updateNodeStatus) reports the same facts, which it takes the same way:
progress and outputs as reports, an end as the attempt's result (stage-out then fetches the files from the
attempt's host through its launch handle, as for a polled result). It also kills attempts on cancel, and
re-attaches to attempts that were in flight when a previous broker died.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pykka

from broker.actions import Collect, Failed, Kill, Launch, LaunchBundle, NodeRef, ReadReports, Recover, StageOut
from broker.controllers.base import Controller
from broker.controllers.messages import Collected, Exited, Pushed, Resume, StagingAttempt, Tick, Watch
from broker.crashpoints import crash_point
from broker.description import spawn
from broker.description.model import NodeSpec
from broker.elf.elf import MAX_OUTPUT_NAMES, OutputBudget, outputs_limit, same_value, value_size
from broker.events.types import EventType
from broker.launchers import base as launcher
from broker.persistence.changes import Changes, Committed, Note, Rejected, Reported, Transition
from broker.states import NodeState
from broker.workers.context import WorkerContext
from broker.workers.pool import WorkerPool

log = logging.getLogger(__name__)
#: seconds a push about an attempt this controller does not follow yet (its launch has not been answered)
#: waits for it; less than the API's commit timeout, so the pusher hears that it was ignored
PUSH_HOLD = 30.0
#: what a pushed end becomes: the outcome of the attempt's result
PUSHED_OUTCOMES = {"SUCCEEDED": launcher.SUCCEEDED, "FAILED": launcher.FAILED, "CANCELLED": launcher.CANCELLED}


class Attempt:
    __slots__ = ("handle", "node", "offset", "reading", "reported", "event_bytes", "muted", "next_read", "progress",
                 "held", "progress_due")

    def __init__(self, handle: launcher.LaunchHandle, node: NodeRef):
        self.handle = handle
        self.node = node
        self.offset = 0
        self.reading = False
        #: outputs already sent as events: name -> JSON value
        self.reported: dict[str, Any] = {}
        #: bytes of the output values sent as events so far, and output reports not sent past their bound
        self.event_bytes = 0
        self.muted = 0
        self.next_read = 0.0
        #: the last progress sent as an event
        self.progress: tuple[float, str | None] | None = None
        #: a newer progress held until ``progress_due`` (time.time()): one progress event per report_interval
        self.held: tuple[float, str | None] | None = None
        self.progress_due = 0.0


class MonitoringController(Controller):
    NAME = "monitoring"

    def __init__(self, writer: pykka.ActorRef[Any], pools: dict[str, WorkerPool], ctx: WorkerContext):
        super().__init__(writer, pools)
        self.ctx = ctx
        self.report_interval = ctx.settings.engine.report_interval
        #: bytes of output values one attempt may keep, and send as events while it runs (each bound alone)
        self.outputs_limit = outputs_limit(ctx.settings.limits.max_output_bytes)
        self.running: dict[int, Attempt] = {}
        #: (node id, attempt) to kill as soon as the attempt is known (cancel raced with its launch)
        self.to_kill: set[tuple[int, int]] = set()
        #: node id -> pushes (with the time they came) about an attempt not followed yet (it pushed before its
        #: launch was answered): taken up when it is
        self.held: dict[int, list[tuple[Pushed, float]]] = {}

    # ---------------------------------------------------------------------------------------- follow

    def launched(self, action: Launch, handle: launcher.LaunchHandle) -> None:
        self.on_watch(Watch(handle, action.node))

    def bundle_launched(self, action: LaunchBundle, handles: list[launcher.LaunchHandle]) -> None:
        for ref, handle in zip(action.nodes, handles):
            self.on_watch(Watch(handle, ref))

    def launch_failed(self, action: Launch | LaunchBundle, failed: Failed) -> None:
        refs = action.nodes if isinstance(action, LaunchBundle) else (action.node,)
        self.writer.tell(Changes(tuple(
            Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME, attempt=ref.attempt,
                       retryable=failed.retryable, message=f"could not start: {failed.error}")
            for ref in refs)))

    def on_watch(self, msg: Watch) -> None:
        handle, ref = msg.handle, msg.node
        changes: list[Any] = []
        if msg.state == NodeState.QUEUED.value:
            changes.append(Transition(node_id=ref.node_id, to=NodeState.RUNNING, actor=self.NAME, attempt=ref.attempt,
                                      fields=self._launch_fields(ref, handle)))
        # an attempt an earlier broker started is not started again: its event says it was adopted
        verb = "adopted" if msg.adopted else "started"
        changes.append(Note(workflow_id=ref.workflow_id, node_id=ref.node_id, type=EventType.NODE_LAUNCH.value,
                            actor=self.NAME, message=f"attempt {ref.attempt} {verb} on {handle.host}",
                            properties={"attempt": ref.attempt, "host": handle.host, "job": handle.job_id,
                                        "workdir": handle.workdir, "adopted": msg.adopted}))
        if msg.state == NodeState.QUEUED.value:
            crash_point("launched")
        self.writer.tell(Changes(tuple(changes)))
        self.running[ref.node_id] = Attempt(handle, ref)
        self.ctx.launcher_of(handle).watch(handle, lambda node_id, attempt, h=handle: self._exited(h))
        if (ref.node_id, ref.attempt) in self.to_kill:
            self.to_kill.discard((ref.node_id, ref.attempt))
            self.dispatch(Kill(handle))
        for pushed, _ in self.held.pop(ref.node_id, ()):
            self.on_pushed(pushed)

    @staticmethod
    def _launch_fields(ref: NodeRef, handle: launcher.LaunchHandle, *,
                       started: bool = False) -> tuple[tuple[str, Any], ...]:
        """The columns a started attempt sets on its node: job id, host, work directory (and, for an attempt
        whose start was never committed, its start time from the launch record)."""
        # remote handles name the account and catalogue host (login@host); local ones say "localhost"
        # whatever the catalogue calls the host, so the catalogue name set with the intent is kept
        host = handle.host if "@" in handle.host else ref.host
        fields: tuple[tuple[str, Any], ...] = (("job_id", handle.job_id), ("host", host), ("workdir", handle.workdir))
        if started and handle.started_at:
            fields += (("started_at", dt.datetime.fromtimestamp(handle.started_at, dt.timezone.utc)),)
        return fields

    def _exited(self, handle: launcher.LaunchHandle) -> None:
        """Called in the launcher's thread when an attempt ended.

        Reading the result there (two small files) saves the hand-off a round trip through a poll
        worker; if that fails, a Collect action reads it instead.
        """
        try:
            message: Any = Collected(handle, self.ctx.launcher_of(handle).collect(handle))
        except Exception:
            message = Exited(handle.node_id, handle.attempt)
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass  # stopping: the next broker recovers this attempt from its work directory

    def on_exited(self, msg: Exited) -> None:
        attempt = self.running.get(msg.node_id)
        if attempt is not None and attempt.node.attempt == msg.attempt:
            self.dispatch(Collect(attempt.handle))

    def on_collected(self, msg: Collected) -> None:
        self.collected(Collect(msg.handle), msg.result)

    def collected(self, action: Collect, result: launcher.AttemptResult) -> None:
        attempt = self.running.pop(action.handle.node_id, None)
        if attempt is None or attempt.node.attempt != result.attempt:
            return
        self._drop_held(action.handle.node_id, "the attempt's result was read from its files first")
        self._finish(attempt.node, result, attempt.reported, attempt.progress, attempt.handle, muted=attempt.muted)

    def collect_failed(self, action: Collect, failed: Failed) -> None:
        attempt = self.running.pop(action.handle.node_id, None)
        if attempt is not None:
            ref = attempt.node
            self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME,
                                        attempt=ref.attempt, retryable=True,
                                        message=f"could not read the result: {failed.error}"))

    def _finish(self, ref: NodeRef, result: launcher.AttemptResult, reported: dict[str, Any],
                last_progress: tuple[float, str | None] | None = None,
                handle: launcher.LaunchHandle | None = None, receipt: Any = None, actor: str = NAME,
                launch: tuple[tuple[str, Any], ...] = (), muted: int = 0) -> None:
        """Commit an ended attempt's result: read from its files (polled) or reported by its elf (pushed).

        ``receipt``: the pusher's, told once the result is committed (or why it was not); ``actor``: who the
        events name ("elf" for a pushed result); ``launch``: the columns of its start too, for an attempt whose
        start was never committed (it ended while no broker ran); ``muted``: output reports not sent as
        events while it ran (past their bound)."""
        crash_point("exit")
        # The readers keep an attempt's outputs within their bounds, but a status file is the payload's
        # account's to write, and a pushed end adds what the elf reported before: bound them here, for all.
        budget = OutputBudget(self.outputs_limit)
        outputs = {k: v for k, v in result.outputs.items() if isinstance(k, str) and budget.admit(k, v)}
        dropped = len(result.outputs) - len(outputs)
        # what is new, or changed since its event (an event per value the node ends with, and no more)
        new_outputs = tuple((k, v) for k, v in outputs.items() if k not in reported or not same_value(reported[k], v))
        progress = result.progress if result.progress is not None and result.progress != last_progress else None
        changes: list[Any] = []
        if new_outputs or progress is not None:
            changes.append(Reported(node_id=ref.node_id, attempt=ref.attempt, actor="elf", progress=progress,
                                    outputs=new_outputs))
        fields: list[tuple[str, Any]] = [*launch, ("exit_code", result.exit_code)]
        if outputs:
            fields.append(("outputs", outputs))
        if result.progress is not None:
            fields.append(("progress", result.progress[0]))
        notes = ""
        if dropped:
            notes += (f"; {dropped} output{'s' if dropped > 1 else ''} dropped past {MAX_OUTPUT_NAMES} names or "
                      f"{self.outputs_limit} bytes")
        if muted:
            notes += (f"; {muted} output report{'s' if muted > 1 else ''} ignored while it ran (past "
                      f"{MAX_OUTPUT_NAMES} names or {self.outputs_limit} bytes of them)")
        refused = None
        if result.outcome == launcher.SUCCEEDED and result.spawn is not None:
            # the fragment rides with the result: both are committed together, or neither (exactly once)
            got = result.spawn
            entry, refused = spawn.accept(got.file, got.text, got.error, attempt=ref.attempt,
                                          spawn_depth=spawn.depth(ref.spec_path), settings=self.ctx.settings)
            if entry is not None:
                fields.append(("spawn", entry))
        if refused is not None:
            to, then, message = NodeState.FAILED, None, refused
        elif result.outcome == launcher.SUCCEEDED:
            spec = self.ctx.plans.get(ref.workflow_id).templates[ref.spec_path]
            if isinstance(spec, NodeSpec) and spec.stage_out:
                to, then = NodeState.STAGING_OUT, self.after_commit(StageOut(ref, handle))
            else:
                to, then = NodeState.SUCCEEDED, None
            message = (result.message + notes) or None
        elif result.outcome == launcher.CANCELLED:
            to, then, message = NodeState.CANCELLED, None, (result.message or "cancelled") + notes
        else:
            to, then, message = NodeState.FAILED, None, (result.message or "") + notes or None
        if receipt is not None:
            then = receipt.via(then)
        changes.append(Transition(node_id=ref.node_id, to=to, actor=actor, attempt=ref.attempt, fields=tuple(fields),
                                  retryable=to is NodeState.FAILED and refused is None, message=message, then=then,
                                  reply_to=receipt))
        self.writer.tell(Changes(tuple(changes)))

    # ------------------------------------------------------------------------------------------ push

    def on_pushed(self, msg: Pushed) -> None:
        attempt = self.running.get(msg.node_id)
        if attempt is not None and attempt.node.attempt > msg.attempt:
            msg.receipt.set(f"attempt {msg.attempt} is stale (the node is at attempt {attempt.node.attempt})")
            return
        if attempt is None or attempt.node.attempt != msg.attempt:
            # pushed before the launch was answered (or before a restarted broker re-attached to it)
            self.held.setdefault(msg.node_id, []).append((msg, time.time()))
            return
        if msg.progress is not None or msg.outputs:
            self._report(attempt, msg.progress, msg.outputs)
        if msg.result is None:
            msg.receipt.tell(None)  # RUNNING: the launch has already moved the node; reports: handed over
            return
        del self.running[msg.node_id]
        result = msg.result
        # the elf's end carries its whole result but its progress: that is the last one it reported
        outputs = {**attempt.reported, **result.outputs}
        self._finish(attempt.node, launcher.AttemptResult(result.node_id, result.attempt, result.outcome,
                                                          result.exit_code, outputs, attempt.held or attempt.progress,
                                                          result.message),
                     attempt.reported, attempt.progress, attempt.handle, receipt=msg.receipt, actor="elf",
                     muted=attempt.muted)

    def _drop_held(self, node_id: int, why: str) -> None:
        for pushed, _ in self.held.pop(node_id, ()):
            pushed.receipt.set(why)

    def _report(self, attempt: Attempt, progress: tuple[float, str | None] | None,
                outputs: tuple[tuple[str, Any], ...]) -> None:
        """Progress and outputs an attempt reported (printed, or pushed by its elf): events for the new ones.

        Output events are bounded per attempt, however the reports come (read across many reads, pushed
        across many calls): MAX_OUTPUT_NAMES names, and ``outputs_limit`` bytes of values in all. A payload
        that reported a mebibyte value again and again would otherwise add a mebibyte to the event table at
        every read. Past the bound, outputs are no longer sent while the attempt runs (counted, and said in
        its result's message); the values it ends with still are."""
        if progress is not None:
            # At most one progress event per report_interval, however often it is reported: reads come that
            # often anyway, but an elf (or a payload holding its session) may push in a loop. The latest waits
            # for on_tick.
            now = time.time()
            if now < attempt.progress_due:
                attempt.held, progress = progress, None
            else:
                attempt.held, attempt.progress = None, progress
                attempt.progress_due = now + self.report_interval
        sent = []
        for name, value in outputs:
            if name not in attempt.reported and len(attempt.reported) >= MAX_OUTPUT_NAMES:
                attempt.muted += 1
                continue
            size = value_size(value)
            if attempt.event_bytes + size > self.outputs_limit:
                attempt.muted += 1
                continue
            attempt.event_bytes += size
            attempt.reported[name] = value
            sent.append((name, value))
        if progress is None and not sent:
            return
        ref = attempt.node
        self.writer.tell(Reported(node_id=ref.node_id, attempt=ref.attempt, actor="elf", progress=progress,
                                  outputs=tuple(sent)))

    # -------------------------------------------------------------------------------------- progress

    def on_tick(self, msg: Tick) -> None:
        for node_id in [n for n, held in self.held.items() if msg.now - held[0][1] > PUSH_HOLD]:
            self._drop_held(node_id, "the broker does not follow this attempt")
        for attempt in self.running.values():
            if attempt.held is not None and msg.now >= attempt.progress_due:
                self._report(attempt, attempt.held, ())
            if not attempt.reading and msg.now >= attempt.next_read:
                attempt.reading = True
                attempt.next_read = msg.now + self.report_interval
                self.dispatch(ReadReports(attempt.handle, attempt.offset))

    def reports_read(self, action: ReadReports, result: tuple[list[launcher.Report], int]) -> None:
        attempt = self.running.get(action.handle.node_id)
        if attempt is None or attempt.handle.attempt != action.handle.attempt:
            return
        reports, attempt.offset = result
        attempt.reading = False
        progress = None
        outputs = []
        for report in reports:
            if report.kind == "progress" and report.percent is not None:
                progress = (report.percent, report.text)
            elif report.kind == "output" and report.text:
                outputs.append((report.text, report.value))
        if progress is not None or outputs:
            self._report(attempt, progress, tuple(outputs))

    def reports_failed(self, action: ReadReports, failed: Failed) -> None:
        attempt = self.running.get(action.handle.node_id)
        if attempt is not None:
            attempt.reading = False

    # ---------------------------------------------------------------------------------------- cancel

    def on_committed(self, msg: Committed) -> None:
        staging = []
        for flying in msg.resume:
            r = flying.node
            ref = NodeRef(node_id=r.node_id, workflow_id=r.workflow_id,
                          workflow_global_id=self.ctx.plans.get(r.workflow_id).global_id, path=r.path,
                          spec_path=r.template, attempt=r.attempt, bindings=r.bindings, member_index=r.member_index,
                          host=(flying.host or "localhost").rpartition("@")[2], owner=flying.owner)
            if flying.state in (NodeState.QUEUED, NodeState.RUNNING):
                self.dispatch(Recover(ref, flying.state.value, flying.workdir, flying.job_id))
            else:
                staging.append(StagingAttempt(ref, flying.state.value, flying.workdir, flying.job_id, flying.host))
        if staging:
            self.tell_peer("staging", Resume(tuple(staging)))
        for node_id, attempt_no in msg.kill:
            attempt = self.running.get(node_id)
            if attempt is not None and attempt.node.attempt == attempt_no:
                self.dispatch(Kill(attempt.handle))
            else:
                self.to_kill.add((node_id, attempt_no))

    def kill_failed(self, action: Kill, failed: Failed) -> None:
        log.warning("could not kill attempt %s of node %s: %s", action.handle.attempt, action.handle.node_id,
                    failed.error)

    # -------------------------------------------------------------------------------------- recovery

    def recovered(self, action: Recover, found: launcher.Recovered) -> None:
        ref = action.node
        if found.status == "finished" and found.result is not None:
            self._drop_held(ref.node_id, "the attempt's result was read from its files first")
            # queued: the payload started and ended while no broker ran; the row learns from its work directory
            # (launch record, pid file) what a running broker would have recorded at its start
            launch = (self._launch_fields(ref, found.handle, started=True)
                      if action.state == NodeState.QUEUED.value and found.handle is not None else ())
            self._finish(ref, found.result, {}, handle=found.handle, launch=launch)
        elif found.status == "running" and found.handle is not None:
            self.on_watch(Watch(found.handle, ref, state=action.state, adopted=True))
        elif found.status == "absent" and action.state == NodeState.QUEUED.value:
            # the launch intent was committed but the process never started: start it, same attempt
            self.dispatch(Launch(ref))
        else:
            self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME,
                                        attempt=ref.attempt, retryable=True,
                                        message=found.message or "the attempt disappeared without a result while "
                                                                 "the broker was down"))

    def recover_failed(self, action: Recover, failed: Failed) -> None:
        ref = action.node
        self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME, attempt=ref.attempt,
                                    retryable=True, message=f"could not recover: {failed.error}"))

    HANDLERS = {Watch: on_watch, Exited: on_exited, Collected: on_collected, Pushed: on_pushed, Tick: on_tick,
                Committed: on_committed,
                Rejected: lambda self, msg: None}
    ON_DONE = {Launch: launched, LaunchBundle: bundle_launched, Collect: collected, ReadReports: reports_read, Kill: lambda self, a, r: None,
               Recover: recovered}
    ON_FAILED = {Launch: launch_failed, LaunchBundle: launch_failed, Collect: collect_failed, ReadReports: reports_failed, Kill: kill_failed,
                 Recover: recover_failed}
