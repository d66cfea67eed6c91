"""The node page of an attempt that ran on an SSH host shows the end of its stdout and stderr, read on that host
as the owner's account (a real ``broker serve``, the test sshd on loopback)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.admin.helpers import catalogue
from tests.api.helpers import Server, add_users, workflow
from tests.fixtures import wait_for
from tests.ui.conftest import login

pytestmark = pytest.mark.slow


@pytest.fixture
def remote_server(tmp_path: Path, sqlite_template: Path, sshd):
    db = tmp_path / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    srv = Server(url, tmp_path, {"BROKER_HOSTS_CATALOGUE": str(catalogue(tmp_path, sshd))}).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def node_page(server: Server, session, gid: str, path: str) -> str:
    page = session.get(server.base + f"/ui/workflows/{gid}").text
    node_id = re.search(rf'href="/ui/nodes/(\d+)"[^>]*>[^<]*{re.escape(path)}', page) or re.search(
        r'href="/ui/nodes/(\d+)"', page)
    return session.get(server.base + f"/ui/nodes/{node_id.group(1)}").text


def test_a_remote_attempts_stdout_and_stderr_tails_are_read_on_its_host(remote_server, sshd):
    talk = ('i=0; while [ $i -lt 150 ]; do echo "line $i &lt;b&gt;"; i=$((i+1)); done; '
            'echo "on $(id -un)"; echo "warned" &gt;&amp;2')
    body = f'<resources><host>archive</host></resources><node id="talk"><payload type="sh">{talk}</payload></node>'
    handle = remote_server.core("alice").submit({"workflowContent": workflow(body, "remote-talker")})
    gid = handle.globalId
    wait_for(lambda: remote_server.core().getStatusInfoForId(gid).state == "succeeded", what="the remote workflow")
    node = node_page(remote_server, login(remote_server), gid, "talk")
    assert "stdout (last 100 lines, cut)" in node  # 151 lines: the last 100 shown, as text
    assert "line 149 &lt;b&gt;" in node and "line 51 &lt;b&gt;" in node and "line 50 " not in node
    assert f"on {sshd.user}" in node  # written by the owner's account there
    assert '<pre class="stream">warned</pre>' in node


def test_a_remote_stdout_that_is_a_symlink_is_not_shown(remote_server):
    talk = 'echo secret-elsewhere &gt; "$HOME/elsewhere.txt"; rm -f stdout; ln -s "$HOME/elsewhere.txt" stdout'
    body = (f'<resources><host>archive</host></resources>'
            f'<node id="link"><payload type="sh">cd "$WB_WORKDIR"; {talk}</payload></node>')
    handle = remote_server.core("alice").submit({"workflowContent": workflow(body, "remote-link")})
    gid = handle.globalId
    wait_for(lambda: remote_server.core().getStatusInfoForId(gid).state == "succeeded", what="the remote workflow")
    node = node_page(remote_server, login(remote_server), gid, "link")
    assert "secret-elsewhere" not in node
