"""The staging controller: copies inputs in before launch and outputs out after success, asynchronously.

Stage-in starts once the node's attempt intent (state ``staging_in``) is committed; when it succeeds the
node moves to ``queued`` and the submission controller launches it. Stage-out runs after a successful
payload (state ``staging_out``); the node succeeds once every output is copied. The StageIn and StageOut
actions ride on those transitions (``after_commit``): the writer hands them straight to a stage worker, and
the worker answers here. A failed transfer fails
the attempt, which is retried per the node's policy.
"""

from __future__ import annotations

from typing import Any

import pykka

from broker.actions import Failed, Launch, NodeRef, StageIn, StageOut
from broker.controllers.base import Controller
from broker.controllers.messages import Resume, Tick
from broker.launchers.base import LaunchHandle
from broker.persistence.changes import Rejected, Transition
from broker.states import NodeState
from broker.workers.pool import WorkerPool


class StagingController(Controller):
    NAME = "staging"

    def __init__(self, writer: pykka.ActorRef[Any], pools: dict[str, WorkerPool]):
        super().__init__(writer, pools)

    def staged_in(self, action: StageIn, _result: Any) -> None:
        ref = action.node
        self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.QUEUED, actor=self.NAME, attempt=ref.attempt,
                                    then=self.after_commit(Launch(ref))))

    def staged_out(self, action: StageOut, _result: Any) -> None:
        ref = action.node
        self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.SUCCEEDED, actor=self.NAME,
                                    attempt=ref.attempt))

    def stage_failed(self, action: StageIn | StageOut, failed: Failed) -> None:
        ref: NodeRef = action.node
        what = "stage-in" if isinstance(action, StageIn) else "stage-out"
        self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME, attempt=ref.attempt,
                                    retryable=failed.retryable,
                                    message=f"{what} failed: {failed.error}"))

    def on_resume(self, msg: Resume) -> None:
        """Transfers are idempotent (temporary name, then rename): redo the ones that were under way."""
        for attempt in msg.nodes:
            ref, host, workdir = attempt.node, attempt.host, attempt.workdir
            if attempt.state == NodeState.STAGING_IN.value:
                self.dispatch(StageIn(ref))
            elif attempt.state == NodeState.STAGING_OUT.value:
                handle = None
                if host and "@" in host and workdir:
                    handle = LaunchHandle(node_id=ref.node_id, attempt=ref.attempt, workdir=workdir,
                                          job_id=attempt.job_id or "", host=host)
                self.dispatch(StageOut(ref, handle))

    HANDLERS = {Resume: on_resume, Tick: lambda self, msg: None, Rejected: lambda self, msg: None}
    ON_DONE = {StageIn: staged_in, StageOut: staged_out}
    ON_FAILED = {StageIn: stage_failed, StageOut: stage_failed}
