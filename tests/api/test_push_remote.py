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

from tests.api.conftest import Server, add_users, workflow


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
    srv = Server(url, tmp_path, {"BROKER_HOSTS_CATALOGUE": str(hosts), "BROKER_HOSTS_SSH_POLL_INTERVAL": "60",
                                 "BROKER_HOSTS_BATCH_POLL_INTERVAL": "60"}).start()
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
