"""The launch worker: renders a node's payload and starts the attempt through its launcher."""

from __future__ import annotations

from broker.actions import Launch
from broker.description.model import NodeSpec
from broker.launchers.base import LaunchHandle, LaunchRequest
from broker.render import NodeInfo, render
from broker.workers.pool import Worker


class LaunchWorker(Worker):
    def launch(self, action: Launch) -> LaunchHandle:
        ref = action.node
        plan = self.ctx.plans.get(ref.workflow_id)
        spec = plan.templates[ref.template]
        assert isinstance(spec, NodeSpec)
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        text, env = render(spec.payload, node=NodeInfo(ref.workflow_global_id, ref.path, ref.attempt, str(workdir)),
                           bindings=ref.bindings, env=spec.execution.env,
                           max_output_bytes=self.ctx.settings.limits.max_text_bytes)
        request = LaunchRequest(node_id=ref.node_id, attempt=ref.attempt, workflow_global_id=ref.workflow_global_id,
                                node_path=ref.path, workdir=str(workdir), payload_type=spec.payload.type,
                                payload_text=text, interpreter=spec.execution.interpreter, env=tuple(env),
                                cwd=spec.execution.workdir, timeout=spec.execution.timeout)
        return self.ctx.launcher.launch(request)

    HANDLERS = {Launch: launch}
