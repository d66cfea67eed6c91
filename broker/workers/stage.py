"""The stage worker: copies a node's input files in before launch and its outputs out after success."""

from __future__ import annotations

from typing import Any

from broker.actions import StageIn, StageOut
from broker.description.model import NodeSpec
from broker.staging import stage_in, stage_out
from broker.workers.pool import Worker


class StageWorker(Worker):
    def _spec(self, ref: Any) -> NodeSpec:
        spec = self.ctx.plans.get(ref.workflow_id).templates[ref.template]
        assert isinstance(spec, NodeSpec)
        return spec

    def stage_in(self, action: StageIn) -> None:
        ref = action.node
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        settings = self.ctx.settings.staging
        for stage in self._spec(ref).stage_in:
            stage_in(stage, workdir, settings.roots, settings.max_bytes)

    def stage_out(self, action: StageOut) -> None:
        ref = action.node
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        settings = self.ctx.settings.staging
        for stage in self._spec(ref).stage_out:
            stage_out(stage, workdir, settings.roots, settings.max_bytes)

    HANDLERS = {StageIn: stage_in, StageOut: stage_out}
