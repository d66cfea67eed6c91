"""The stage worker: copies a node's input files in before launch and its outputs out after success.

Transfers run on behalf of the workflow's owner (sftp:// sources use that user's account on the host).
For an attempt that ran on a remote host, its output files are first fetched into the local attempt
directory, then copied to their targets like local ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from broker.actions import NodeRef, StageIn, StageOut
from broker.description.model import NodeSpec
from broker.staging import stage_in, stage_out
from broker.workers.pool import Worker


class StageWorker(Worker):
    def _spec(self, ref: Any) -> NodeSpec:
        spec = self.ctx.plans.get(ref.workflow_id).templates[ref.template]
        assert isinstance(spec, NodeSpec)
        return spec

    @contextlib.contextmanager
    def _as_owner(self, ref: NodeRef) -> Iterator[None]:
        if self.ctx.resources is None:
            yield
            return
        from broker.resources.transports import acting_as

        with acting_as(ref.owner):
            yield

    def stage_in(self, action: StageIn) -> None:
        ref = action.node
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = self.ctx.settings.staging
        with self._as_owner(ref):
            for stage in self._spec(ref).stage_in:
                stage_in(stage, workdir, settings.roots, settings.max_bytes)

    def stage_out(self, action: StageOut) -> None:
        ref = action.node
        spec = self._spec(ref)
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        handle = action.handle
        if handle is not None and "@" in handle.host:
            workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            launcher = self.ctx.launcher_for(handle.host, ref.owner)
            launcher.fetch_outputs(handle, [s.source for s in spec.stage_out], str(workdir))  # type: ignore[attr-defined]
        settings = self.ctx.settings.staging
        with self._as_owner(ref):
            for stage in spec.stage_out:
                stage_out(stage, workdir, settings.roots, settings.max_bytes)

    HANDLERS = {StageIn: stage_in, StageOut: stage_out}
