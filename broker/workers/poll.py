"""The poll worker: reads results, progress and recovery facts from launchers; reads control commands."""

from __future__ import annotations

from sqlalchemy import select

from broker.actions import Collect, PollControl, ReadReports, Recover
from broker.launchers.base import AttemptResult, Recovered, Report
from broker.errors import BrokerError
from broker.persistence.control import ControlCommand, resolve_target
from broker.persistence.models import Control
from broker.workers.pool import Worker

#: most control commands read per poll
CONTROL_PAGE = 100


class PollWorker(Worker):
    def collect(self, action: Collect) -> AttemptResult:
        return self.ctx.launcher_of(action.handle).collect(action.handle)

    def read_reports(self, action: ReadReports) -> tuple[list[Report], int]:
        return self.ctx.launcher_of(action.handle).reports(action.handle, action.offset)

    def recover(self, action: Recover) -> Recovered:
        ref = action.node
        if self._elsewhere(ref.host):
            # its launch lock, pid and files are on the other machine: asked here, it would look never started
            # and run a second time; it is lost instead, and retried (on this machine) per the node's policy
            return Recovered("lost", message="the attempt ran on the local host of another machine (the broker "
                                             "that held the database before this one ran there): it cannot be "
                                             "seen or adopted from here")
        workdir = action.workdir or str(self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt))
        return self.ctx.launcher_for(ref.host, ref.owner).recover(ref.node_id, ref.attempt, workdir, action.job_id)

    def _elsewhere(self, host: str) -> bool:
        """Whether ``host`` is a local host of the machine of the lease's previous holder, which is not this one."""
        lease = self.ctx.lease
        if lease is None or not lease.from_elsewhere():
            return False
        try:
            return self.ctx.resources.catalogue.get(host.rpartition("@")[2]).launcher == "local"
        except BrokerError:  # not in the catalogue: the launcher's own recovery says so
            return False

    def poll_control(self, action: PollControl) -> list[ControlCommand]:
        """Unapplied control commands, resolved."""
        out: list[ControlCommand] = []
        with self.ctx.session_factory() as s:
            rows = s.execute(select(Control.id, Control.command, Control.target, Control.requested_by)
                             .where(Control.applied_at.is_(None), Control.id > action.after_id)
                             .order_by(Control.id).limit(CONTROL_PAGE)).all()
            for row in rows:
                try:
                    workflow_id, node_ids = resolve_target(s, row.target)
                except BrokerError as exc:
                    out.append(ControlCommand(row.id, row.command, None, None, row.requested_by, str(exc)))
                else:
                    out.append(ControlCommand(row.id, row.command, workflow_id, node_ids, row.requested_by))
        return out

    HANDLERS = {Collect: collect, ReadReports: read_reports, Recover: recover, PollControl: poll_control}
