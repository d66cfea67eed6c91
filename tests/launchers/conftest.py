"""The local launcher's tests run twice: with a wb-run.sh wrapper per attempt, and under a resident agent.

A test module opts in with ``pytestmark = pytest.mark.usefixtures("local_kind")``: its ``LocalLauncher`` is
then, in the "agent" run, :class:`broker.launchers.agentlocal.AgentLauncher` with a state directory of the
test's own (each test has its own agent, which exits once its launchers are closed and its payloads ended).
Tests of the wrapper itself (its pid in /proc, a wrapper stopped before its first instruction, attempts of a
broker from before the launch lock) are marked ``wrapper_only`` and skipped in the agent run.
"""

import functools

import pytest

from broker.launchers.agentlocal import AgentLauncher


def pytest_configure(config):
    config.addinivalue_line("markers", "wrapper_only: a test of the wb-run.sh wrapper, not run under the agent")


@pytest.fixture(params=["wrapper", "agent"])
def local_kind(request, monkeypatch, tmp_path_factory):
    if request.param == "agent":
        if request.node.get_closest_marker("wrapper_only"):
            pytest.skip("a test of the wb-run.sh wrapper")
        state = tmp_path_factory.mktemp("agents")
        state.chmod(0o711)  # an agent of another account reaches its own directory below it
        monkeypatch.setattr(request.module, "LocalLauncher", functools.partial(AgentLauncher, str(state)))
    return request.param
