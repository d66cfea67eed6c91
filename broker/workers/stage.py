"""The stage worker: copies a node's input files in before launch and its outputs out after success.

Transfers run on behalf of the workflow's owner (sftp:// sources use that user's account on the host;
file:// paths, and the attempt directory of a local node, are read and written as the user's account on
this machine when the broker switches accounts: :class:`broker.transfers.Owner`). For an attempt that ran on a
remote host, its output files are first fetched into the local attempt directory, then copied to their
targets like local ones.
"""

from __future__ import annotations

from typing import Any

from urllib.parse import urlsplit

from broker.actions import NodeRef, StageIn, StageOut
from broker.description.model import NodeSpec, Stage
from broker.runas import make_workdir
from broker.transfers import Owner, stage_in, stage_out
from broker.workers.pool import Worker

#: directory of the work root that transfers of other schemes pass through on their way to an account
SPOOL = ".spool"


class StageWorker(Worker):
    def _spec(self, ref: Any) -> NodeSpec:
        spec = self.ctx.plans.get(ref.workflow_id).templates[ref.spec_path]
        assert isinstance(spec, NodeSpec)
        return spec

    def _owner(self, ref: NodeRef, stages: tuple[Stage, ...], side: str) -> Owner | None:
        """Whose rights this node's staging uses on this machine (None: the broker's own)."""
        resources = self.ctx.resources
        host = resources.catalogue.get(ref.host.rpartition("@")[2])
        if host.launcher != "local" and not any(urlsplit(getattr(s, side)).scheme == "file" for s in stages):
            return None  # nothing here touches this machine's files on the user's behalf
        run_as, owns_workdir = resources.staging_account(ref.owner, host.name)
        return None if run_as is None else Owner(run_as, owns_workdir, self.ctx.workdir / SPOOL)

    def stage_in(self, action: StageIn) -> None:
        ref = action.node
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        stages = self._spec(ref).stage_in
        owner = self._owner(ref, stages, "source")
        make_workdir(str(workdir), owner.run_as if owner is not None and owner.owns_workdir else None,
                     switching=self.ctx.resources.switches_accounts())
        settings = self.ctx.settings.staging
        transports = self.ctx.resources.transports_for(ref.owner)
        for stage in stages:
            stage_in(stage, workdir, settings.roots, settings.max_bytes, owner, transports)

    def stage_out(self, action: StageOut) -> None:
        ref = action.node
        spec = self._spec(ref)
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        handle = action.handle
        if handle is not None and "@" in handle.host:
            workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            launcher = self.ctx.launcher_for(handle.host, ref.owner)
            launcher.fetch_outputs(handle, [s.source for s in spec.stage_out], str(workdir))
        settings = self.ctx.settings.staging
        owner = self._owner(ref, spec.stage_out, "target")
        transports = self.ctx.resources.transports_for(ref.owner)
        for stage in spec.stage_out:
            stage_out(stage, workdir, settings.roots, settings.max_bytes, owner, transports)

    HANDLERS = {StageIn: stage_in, StageOut: stage_out}
