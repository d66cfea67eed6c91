"""``Client.local``: the same client over an engine in this process, on SQLite, with no server."""

from __future__ import annotations

import pytest

from broker.client import AdminClient, Client, ConnectionFailed, NotFound
from tests.api.helpers import EXAMPLES, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # each test starts an engine


@pytest.fixture
def local_env(tmp_path, monkeypatch):
    """A SQLite URL (created and migrated on first use) and a state directory of the test's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("BROKER_ENGINE_USER", "carol")
    return f"sqlite:///{tmp_path / 'local.db'}", tmp_path / "work"


def test_a_local_client_runs_a_workflow_to_its_end_and_reads_it_like_a_remote_one(local_env):
    url, workdir = local_env
    with Client.local(url, workdir=workdir) as local:
        assert local.user == "carol"
        wf = local.submit(EXAMPLES / "diamond.xml", label="local")
        seen = []
        assert wf.wait(timeout=120, on_progress=seen.append).state == "succeeded"
        assert seen[-1].state == "succeeded" and wf.outputs("split") == {"parts": 2}
        assert {n.path for n in wf.nodes()} == {"split", "left", "right", "join"}
        assert [e.type for e in wf.events()][0] == "WORKFLOW_SUBMITTED"
        with pytest.raises(NotFound):
            local.workflow("wf-00000000000000000000")
    # the database keeps it: a later local client (here an admin one) finds it
    with AdminClient.local(url, workdir=workdir) as again:
        assert again.workflow(wf.global_id).status().state == "succeeded"
        assert {u.user for u in again.users()} == {"carol"}


def test_one_local_client_at_a_time_holds_the_database(local_env):
    url, workdir = local_env
    with Client.local(url, workdir=workdir):
        with pytest.raises(ConnectionFailed, match="another broker"):
            Client.local(url, workdir=workdir)
    Client.local(url, workdir=workdir).close()  # free again once the first one is closed


def test_a_workflow_left_running_at_close_goes_on_with_the_next_local_client(local_env, tmp_path):
    url, workdir = local_env
    gate = tmp_path / "gate"
    with Client.local(url, workdir=workdir) as first:
        wf = first.submit(workflow(f'<node id="held">{waits_for(gate, 120)}</node>', "held"))
        wait_for(lambda: wf.status("held").state == "running", what="the payload to start")
    gate.touch()
    with Client.local(url, workdir=workdir) as second:
        assert second.workflow(wf.global_id).wait(timeout=120).state == "succeeded"
