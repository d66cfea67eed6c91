"""The elf's push channel end to end: `broker serve`, a node on a host with push="true", over SSH and SLURM.

The hosts' status files (and the scheduler) are read only once a minute here, so a node that succeeds within
seconds did so through the elf's own updateNodeStatus call (authenticated by its attempt's session), which
the event's actor ("elf") confirms.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.api.helpers import Server, add_users, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process


@pytest.fixture(params=["ssh", "slurm"])
def push_server(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, sshd) -> Iterator[Server]:
    db = tmp_path / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    ssh = f'<ssh address="{sshd.host}" port="{sshd.port}" knownHosts="{sshd.known_hosts}"/>'
    if request.param == "slurm":
        slurm = request.getfixturevalue("slurm")
        # the cluster's scratch is shared with its compute node; the job goes to the test partition
        scratch = slurm.workdir / f"push-{uuid.uuid4().hex[:8]}"
        extra = f'<batch defaultQueue="{slurm.partition}"/>'
    else:
        scratch, extra = Path(f".broker-push-{uuid.uuid4().hex[:8]}"), ""
    hosts = tmp_path / "hosts.xml"
    hosts.write_text(f"""<hosts xmlns="urn:workflow-broker:hosts:1.0" default="localhost">
      <host name="localhost" launcher="local"/>
      <host name="pushing" launcher="{request.param}" push="true">{ssh}<scratch>{scratch}</scratch>{extra}
        <account user="alice" login="{sshd.user}" key="{sshd.key}"/></host>
    </hosts>""")
    results = tmp_path / "results"
    results.mkdir()
    srv = Server(url, tmp_path, {"BROKER_HOSTS_CATALOGUE": str(hosts), "BROKER_HOSTS_SSH_POLL_INTERVAL": "60",
                                 "BROKER_HOSTS_BATCH_POLL_INTERVAL": "60", "BROKER_STAGING_ROOTS": str(results)}).start()
    srv.results = results  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()
        if request.param == "slurm":
            shutil.rmtree(scratch, ignore_errors=True)


def test_an_elf_on_a_push_host_reports_its_run_and_result_through_the_api(push_server: Server) -> None:
    from broker.persistence.models import ElfSession, Event

    body = ('<node id="far"><scheduling><host>pushing</host></scheduling><payload type="sh">'
            'echo "@broker output answer=42"; test -e push.json &amp;&amp; exit 3; exit 0</payload></node>'
            '<node id="after"><dependsOn node="far"/><payload type="sh">true</payload></node>')
    handle = push_server.core().submit({"workflowContent": workflow(body)})
    # far within seconds although its host's status files are read once a minute: the pushes moved it
    assert push_server.wait_state(handle.id, "succeeded", "failed") == "succeeded"
    far = push_server.node(handle.id, "far")
    assert (far.state, far.exit_code, far.outputs) == ("succeeded", 0, {"answer": 42})
    with push_server.sessions()() as s:
        moved_by = {(e.state, e.actor) for e in s.scalars(select(Event).where(
            Event.workflow_id == handle.id, Event.node_path == "far", Event.type == "NODE_STATE"))}
        # running comes from the launch itself (the elf's RUNNING then changes nothing); the result from the elf
        assert ("succeeded", "elf") in moved_by and ("succeeded", "monitoring") not in moved_by, moved_by
        # one session for the one attempt; the elf removed its secret file before the payload ran (exit 0)
        assert s.scalars(select(ElfSession.attempt).where(ElfSession.node_id == far.id)).all() == [1]


def _moved_by(server: Server, workflow_id: int, path: str) -> set[tuple[str, str]]:
    from broker.persistence.models import Event

    with server.sessions()() as s:
        return {(e.state, e.actor) for e in s.scalars(select(Event).where(
            Event.workflow_id == workflow_id, Event.node_path == path, Event.type == "NODE_STATE"))}


@pytest.mark.parametrize("push_server", ["ssh"], indirect=True)
def test_a_pushed_result_stages_out_from_the_push_host_like_a_polled_one(push_server: Server) -> None:
    target = push_server.results / "result.txt"  # type: ignore[attr-defined]
    body = (f'<node id="far"><scheduling><host>pushing</host></scheduling><payload type="sh">'
            f'echo pushed > out.txt</payload><stageOut source="out.txt" target="{target.as_uri()}"/></node>')
    handle = push_server.core().submit({"workflowContent": workflow(body)})
    state = push_server.wait_state(handle.id, "succeeded", "failed")
    far = push_server.node(handle.id, "far")
    assert state == "succeeded", far.message
    assert target.read_text() == "pushed\n"
    # the result came through the push (the host's status files are read once a minute)
    assert ("staging_out", "elf") in _moved_by(push_server, handle.id, "far")


@pytest.mark.parametrize("push_server", ["ssh"], indirect=True)
def test_the_last_progress_a_pushing_payload_printed_is_recorded(push_server: Server) -> None:
    from broker.persistence.models import Event

    # the elf looks for new progress every 10 s: this payload ends before its first look
    body = ('<node id="far"><scheduling><host>pushing</host></scheduling><payload type="sh">'
            'echo "@broker progress 30 started"; echo \'@broker progress 90 "almost"\'</payload></node>')
    handle = push_server.core().submit({"workflowContent": workflow(body)})
    assert push_server.wait_state(handle.id, "succeeded", "failed") == "succeeded"
    assert push_server.node(handle.id, "far").progress == 90
    with push_server.sessions()() as s:
        last = s.scalars(select(Event).where(Event.workflow_id == handle.id, Event.node_path == "far",
                                             Event.type == "NODE_PROGRESS").order_by(Event.id.desc())).first()
    assert last is not None and (last.properties["percent"], last.message) == (90, "almost")
    status = push_server.core().getStatusInfoForId(f"{handle.globalId}/far")
    assert status.progress == 90
