"""The launch worker: renders a node's payload and starts the attempt through its host's launcher."""

from __future__ import annotations

from broker.actions import Launch, LaunchBundle, NodeRef
from broker.description.model import NodeSpec
from broker.launchers.base import LaunchHandle, LaunchRequest
from broker.render import NodeInfo, render
from broker.workers.pool import Worker


class LaunchWorker(Worker):
    def _spec(self, ref: NodeRef) -> NodeSpec:
        spec = self.ctx.plans.get(ref.workflow_id).templates[ref.spec_path]
        assert isinstance(spec, NodeSpec)
        return spec

    def _arguments(self, ref: NodeRef) -> tuple[tuple[str, str], ...]:
        return self.ctx.plans.get(ref.workflow_id).spec.arguments or ()

    def _request(self, ref: NodeRef, spec: NodeSpec) -> LaunchRequest:
        workdir = self.ctx.attempt_dir(ref.workflow_global_id, ref.path, ref.attempt)
        text, env = render(spec.payload, node=NodeInfo(ref.workflow_global_id, ref.path, ref.attempt, str(workdir)),
                           bindings=ref.bindings, env=spec.execution.env, arguments=self._arguments(ref),
                           max_output_bytes=self.ctx.settings.limits.max_text_bytes)
        return LaunchRequest(node_id=ref.node_id, attempt=ref.attempt, workflow_global_id=ref.workflow_global_id,
                             node_path=ref.path, workdir=str(workdir), payload_type=spec.payload.type,
                             payload_text=text, interpreter=spec.execution.interpreter, env=tuple(env),
                             cwd=spec.execution.workdir, timeout=spec.execution.timeout, push=self._push(ref))

    def _push(self, ref: NodeRef) -> tuple[str, int, str] | None:
        """A push-channel session of this attempt, when its host pushes and an API listens (``broker serve``)."""
        url = self.ctx.push_url
        if url is None or not self.ctx.resources.catalogue.get(ref.host.rpartition("@")[2]).push:
            return None
        from broker.persistence.elfsessions import create_session  # a credential row, not node state: no writer needed

        session_id, secret = create_session(self.ctx.session_factory, ref.node_id, ref.attempt)
        return url, session_id, secret

    def _batch(self, ref: NodeRef) -> bool:
        return self.ctx.resources.catalogue.get(ref.host).is_batch

    def launch(self, action: Launch) -> LaunchHandle:
        ref = action.node
        spec = self._spec(ref)
        launcher = self.ctx.launcher_for(ref.host, ref.owner)
        request = self._request(ref, spec)
        self.ctx.hold()  # again, as late as can be: rendering and the push session took time
        if self._batch(ref):
            # a batch job is written from the node's scheduling profile
            return launcher.launch(request, spec.scheduling)
        return launcher.launch(request)

    def launch_bundle(self, action: LaunchBundle) -> list[LaunchHandle]:
        """Members of one sweep in one batch job or job array: one submission, one handle per member."""
        first = action.nodes[0]
        spec = self._spec(first)
        launcher = self.ctx.launcher_for(first.host, first.owner)
        requests = [self._request(ref, self._spec(ref)) for ref in action.nodes]
        self.ctx.hold()
        if action.array:
            return launcher.launch_array(requests, spec.scheduling, action.throttle)
        return launcher.launch_bundle(requests, spec.scheduling)

    HANDLERS = {Launch: launch, LaunchBundle: launch_bundle}
