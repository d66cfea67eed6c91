"""The API's archiveWorkflowsTo and deletes through zeep against ``broker serve``, and the command line next
to a running service: ``admin state``/``users`` agree with the API, ``cancel`` acts on any user's workflow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import zeep

from broker.admin.reader import read_archive
from broker.admin.targets import FileTarget
from tests.admin.helpers import selection
from tests.api.helpers import BROKER, EXAMPLES, Server, add_users, all_events, fault_code, waits_for, workflow
from tests.fixtures import DEADLINE, wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

HELLO = (EXAMPLES / "hello.xml").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path):
    """A server whose archive roots are <tmp>/archives."""
    tmp = tmp_path_factory.mktemp("serve-admin")
    shutil.copy(sqlite_template, tmp / "broker.db")
    url = f"sqlite:///{tmp / 'broker.db'}"
    add_users(url)
    srv = Server(url, tmp, {"BROKER_ARCHIVE_ROOTS": str(tmp / "archives")}).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "BROKER_ENGINE_USER": "tester"}
    return subprocess.run([str(BROKER), *args], capture_output=True, text=True, env=env, timeout=DEADLINE)


def gated(gate: Path, name: str = "gated") -> str:
    return workflow(f'<node id="wait">{waits_for(gate)}</node>'
                    '<node id="after"><dependsOn node="wait"/><payload type="sh">echo after</payload></node>', name)


def test_archive_workflows_to_archives_and_deletes_while_other_workflows_run_undisturbed(served, tmp_path):
    gate = tmp_path / "gate"
    running = served.core("alice").submit({"workflowContent": gated(gate)})
    wait_for(lambda: served.node(running.id, "wait").state == "running", what="the gated node to run")
    done = [served.core("alice").submit({"workflowContent": HELLO, "workflowId": f"h{i}"}) for i in range(3)]
    for handle in done:
        served.wait_state(handle.id, "succeeded")
    bobs = served.core("bob").submit({"workflowContent": HELLO})
    served.wait_state(bobs.id, "succeeded")
    archives = served.tmp / "archives" / "api"

    served.core("root").archiveWorkflowsTo(archives.as_uri(), selection("<user>alice</user>", delete_after=True))

    target = FileTarget(archives)
    assert sorted(p.name for p in archives.glob("*.xml")) == sorted(f"{h.globalId}.xml" for h in done)
    for handle in done:
        assert read_archive(target, f"{handle.globalId}.xml").fields["state"] == "succeeded"
        with pytest.raises(zeep.exceptions.Fault) as caught:
            served.core("alice").getStatusInfoForId(handle.globalId)
        assert fault_code(caught) == "Client.NotFound"
        assert not (served.tmp / "work" / handle.globalId).exists()
    assert served.core("bob").getStatusInfoForId(bobs.globalId).state == "succeeded"
    # the running workflow was left alone and goes on to its end
    assert served.core("alice").getStatusInfoForId(running.globalId).state == "running"
    gate.touch()
    assert served.wait_state(running.id, "succeeded", "failed") == "succeeded"
    mine = [e for e in all_events(served) if e.workflowGlobalId == running.globalId]
    assert mine[-1].type == "WORKFLOW_STATE" and mine[-1].state == "succeeded"
    assert [e.state for e in mine if e.type == "NODE_STATE" and e.nodePath == "after"] == \
        ["ready", "queued", "running", "succeeded"]
    summary = [e for e in all_events(served) if e.type == "ADMIN_ACTION" and e.workflowId is None
               and e.message.startswith(f"archive to {archives.as_uri()} (")]
    assert summary and summary[-1].actor == "admin:root"
    props = {p.name: json.loads(p.value) for p in summary[-1].properties}
    assert props["deleted"] == 3 and running.globalId in props["skipped_ids"]


def test_only_admins_may_archive_and_bad_arguments_are_client_faults(served):
    handle = served.core("alice").submit({"workflowContent": HELLO})
    served.wait_state(handle.id, "succeeded")
    uri = (served.tmp / "archives" / "x").as_uri()
    with pytest.raises(zeep.exceptions.Fault) as caught:
        served.core("alice").archiveWorkflowsTo(uri, selection())
    assert fault_code(caught) == "Client.NotAuthorized"
    for arguments in ((uri, "<archive/>"), (uri, None), ("file:///etc", selection()), ("ftp://x/y", selection())):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            served.core("root").archiveWorkflowsTo(*arguments)
        assert fault_code(caught) == "Client.InvalidArgument", arguments
    assert not Path("/etc").joinpath(f"{handle.globalId}.xml").exists()


def test_an_api_delete_removes_the_work_directory_too(served):
    handle = served.core("bob").submit({"workflowContent": HELLO})
    served.wait_state(handle.id, "succeeded")
    assert (served.tmp / "work" / handle.globalId).is_dir()
    served.admin().delete(handle.globalId)
    assert not (served.tmp / "work" / handle.globalId).exists()


def test_admin_state_and_users_print_what_the_api_answers(served):
    handle = served.core("bob").submit({"workflowContent": HELLO})
    served.wait_state(handle.id, "succeeded")
    wait_for(lambda: not (served.admin().getServiceState().hosts or []), what="no job in flight")
    api = served.admin().getServiceState()
    cli = _cli(served, "admin", "state", "--json")
    assert cli.returncode == 0, cli.stderr
    state = json.loads(cli.stdout)
    assert state["workflows"] == {c.state: c.count for c in api.workflows}
    assert state["nodes"] == {c.state: c.count for c in api.nodes}
    assert state["outboxBacklog"] == api.outboxBacklog and state["brokerRunning"] is True
    users = json.loads(_cli(served, "admin", "users", "--json").stdout)
    assert users == [{"user": u.user, "admin": u.admin, "workflows": {c.state: c.count for c in u.workflows or []},
                      "total": u.total, "lastSubmitted": u.lastSubmitted and u.lastSubmitted.isoformat()}
                     for u in served.admin().getUserInfo()]


def test_the_operator_s_cancel_and_restart_act_on_any_user_s_workflow(served, tmp_path):
    handle = served.core("alice").submit({"workflowContent": gated(tmp_path / "never", "other")})
    wait_for(lambda: served.node(handle.id, "wait").state == "running", what="the gated node to run")
    cancelled = _cli(served, "cancel", handle.globalId)
    assert cancelled.returncode == 0, cancelled.stderr
    assert served.wait_state(handle.id, "cancelled") == "cancelled"
    restarted = _cli(served, "restart", handle.globalId + "/wait")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: served.node(handle.id, "wait").attempt == 2, what="the restarted node's second attempt")
    assert _cli(served, "cancel", handle.globalId).returncode == 0
    served.wait_state(handle.id, "cancelled")


def test_the_archive_uri_in_the_events_names_documents_that_exist(served):
    handle = served.core("bob").submit({"workflowContent": HELLO})
    served.wait_state(handle.id, "succeeded")
    archives = served.tmp / "archives" / "keep"
    served.core("root").archiveWorkflowsTo(archives.as_uri(), selection(f"<id>{handle.globalId}</id>"))
    # the writer records the event after the call returned
    notes = wait_for(lambda: [e for e in all_events(served) if e.type == "ADMIN_ACTION"
                              and e.workflowGlobalId == handle.globalId], what="the archive event")
    document = archives / f"{handle.globalId}.xml"
    assert notes[0].message == f"archived to {document.as_uri()}" and notes[0].actor == "admin:root"
    assert document.exists() and os.stat(document).st_size > 0
    assert served.core("bob").getStatusInfoForId(handle.globalId).state == "succeeded"
