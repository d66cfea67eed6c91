"""The local launcher's tests run twice: with a wb-run.sh wrapper per attempt, and under a resident agent.

A test module opts in with ``pytestmark = pytest.mark.usefixtures("local_kind")``: its ``LocalLauncher`` is
then, in the "agent" run, :class:`broker.launchers.agentlocal.AgentLauncher` with a state directory of the
test's own (each test has its own agent, which exits once its launchers are closed and its payloads ended).
Tests of the wrapper itself (its pid in /proc, a wrapper stopped before its first instruction, attempts of a
broker from before the launch lock) are marked ``wrapper_only`` and skipped in the agent run.
"""

import functools
import os
import shutil
import tempfile

import pytest

from broker.launchers.agentlocal import AgentLauncher


def pytest_configure(config):
    config.addinivalue_line("markers", "wrapper_only: a test of the wb-run.sh wrapper, not run under the agent")


@pytest.fixture(params=["wrapper", "agent"])
def local_kind(request, monkeypatch):
    if request.param == "wrapper":
        yield request.param
        return
    if request.node.get_closest_marker("wrapper_only"):
        pytest.skip("a test of the wb-run.sh wrapper")
    # every account traverses it (as the work root's parents): an agent of another account reaches its own
    state = tempfile.mkdtemp(prefix="broker-agents-", dir="/tmp")
    os.chmod(state, 0o711)
    monkeypatch.setattr(request.module, "LocalLauncher", functools.partial(AgentLauncher, state))
    try:
        yield request.param
    finally:
        shutil.rmtree(state, ignore_errors=True)
