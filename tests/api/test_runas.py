"""Local payloads run as their owner's account, never as the broker: a real ``broker serve`` running as root,
users submitting through the SOAP API, the test accounts broker-test and broker-test2.

alice is mapped to broker-test by the host catalogue, bob to broker-test2 by the accounts table, carol to
nothing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import BROKER, Server, add_users, workflow
from tests.fixtures import DEADLINE
from tests.fixtures.accounts import staging_share

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

ALICE_ACCOUNT, BOB_ACCOUNT = "broker-test", "broker-test2"


def add_mapping(url: str) -> None:
    """User carol (no account anywhere) and bob's row of the accounts table (``broker user map``)."""
    from broker.api.passwords import hash_password
    from broker.persistence import repository
    from broker.persistence.db import make_engine, session_factory

    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as s:
            repository.ensure_user(s, "carol", "user").password_hash = hash_password("carol-pw")
            repository.ensure_user(s, "bob", "user")
    finally:
        engine.dispose()
    mapped = subprocess.run([str(BROKER), "user", "map", "bob", "localhost", BOB_ACCOUNT, "--db", url],
                            capture_output=True, text=True, timeout=120)
    assert mapped.returncode == 0, mapped.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory, sqlite_template, test_accounts) -> Iterator[Server]:
    """A root broker whose work root and staging root every account can traverse."""
    tmp = tmp_path_factory.mktemp("runas")
    open_root = Path(tempfile.mkdtemp(prefix="broker-runas-", dir="/tmp"))
    open_root.chmod(0o711)
    share, _ = staging_share(open_root, test_accounts.first, "alice")
    (open_root / "hosts.xml").write_text(f"""<hosts xmlns="urn:workflow-broker:hosts:1.0">
      <host name="localhost" launcher="local"><account user="alice" login="{ALICE_ACCOUNT}"/></host>
    </hosts>""")
    db = tmp / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    add_mapping(url)
    server = Server(url, tmp, {"BROKER_ENGINE_RUN_AS_BROKER_ACCOUNT": "false",
                               "BROKER_ENGINE_WORKDIR": str(open_root / "work"),
                               "BROKER_HOSTS_CATALOGUE": str(open_root / "hosts.xml"),
                               "BROKER_STAGING_ROOTS": str(share)})
    server.open_root = open_root  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop(expect=None)
        server.close()
        shutil.rmtree(open_root, ignore_errors=True)


def submit(site: Server, user: str, body: str, password: str | None = None) -> int:
    handle = site.core(user, password).submit({"workflowContent": workflow(body)})
    return handle.id


def node_of(site: Server, user: str, body: str, password: str | None = None) -> tuple[str, object]:
    """Submit a one-node workflow whose node is "n"; its final state and row."""
    workflow_id = submit(site, user, body, password)
    state = site.wait_state(workflow_id, "succeeded", "failed")
    return state, site.node(workflow_id, "n")


def test_a_payload_alice_submits_runs_as_her_account_in_a_directory_of_its_own(site, test_accounts):
    state, node = node_of(site, "alice", """
      <node id="n"><payload type="sh">echo "@broker output who=\\"$(id -un)\\""
echo "@broker output umask=\\"$(umask)\\""
echo "@broker output home=\\"$HOME\\""</payload></node>""")
    assert state == "succeeded", node.message
    assert node.outputs == {"who": ALICE_ACCOUNT, "umask": "0077", "home": test_accounts.first.home}
    st = os.stat(node.workdir)
    assert (st.st_uid, st.st_mode & 0o777) == (test_accounts.first.uid, 0o700)


def test_bob_cannot_read_alices_work_directory(site):
    state, alices = node_of(site, "alice", '<node id="n"><payload type="sh">echo secret > secret.txt</payload></node>')
    assert state == "succeeded", alices.message
    secret = Path(alices.workdir) / "secret.txt"
    state, bobs = node_of(site, "bob", f"""
      <node id="n"><payload type="sh">id -un; if cat "{secret}"; then echo '@broker output read=true'
else echo '@broker output read=false'; fi</payload></node>""")
    assert state == "succeeded", bobs.message
    assert bobs.outputs == {"read": False}
    assert (Path(bobs.workdir) / "stdout").read_text().startswith(f"{BOB_ACCOUNT}\n")
    assert "Permission denied" in (Path(bobs.workdir) / "stderr").read_text()


def test_bobs_stage_out_cannot_replace_a_file_only_alices_account_may_write(site):
    target = site.open_root / "share" / "alice" / "result.txt"  # type: ignore[attr-defined]
    body = f"""
      <node id="n"><payload type="sh">echo "by $(id -un)" > out.txt</payload>
        <stageOut source="out.txt" target="file://{target}"/></node>"""
    state, node = node_of(site, "bob", body)
    assert state == "failed"
    assert f"cannot write {target}: Permission denied (as account '{BOB_ACCOUNT}')" in node.message
    assert target.read_text() == "alice's\n"
    state, node = node_of(site, "alice", body)
    assert state == "succeeded", node.message
    assert target.read_text() == f"by {ALICE_ACCOUNT}\n"


def test_bobs_stage_in_cannot_read_a_file_only_alices_account_may_read(site):
    private = site.open_root / "share" / "alice" / "private.txt"  # type: ignore[attr-defined]
    body = f"""
      <node id="n"><payload type="sh">cat in.txt</payload><stageIn source="file://{private}" target="in.txt"/>
      </node>"""
    state, node = node_of(site, "bob", body)
    assert state == "failed"
    assert f"cannot read {private}: Permission denied (as account '{BOB_ACCOUNT}')" in node.message
    state, node = node_of(site, "alice", body)
    assert state == "succeeded", node.message
    assert (Path(node.workdir) / "stdout").read_text() == "alice's secret\n"


def test_an_unmapped_owner_gets_a_clear_failure_and_nothing_runs(site):
    marker = site.open_root / "carol-ran"  # type: ignore[attr-defined]
    state, node = node_of(site, "carol", f'<node id="n"><payload type="sh">touch "{marker}"</payload></node>',
                          "carol-pw")
    assert state == "failed"
    assert "user 'carol' has no account on host 'localhost' (add an <account> to " in node.message
    assert "or a row to the accounts table" in node.message
    assert node.attempt == 1 and not marker.exists()
    assert node.workdir is None or not os.path.exists(os.path.join(node.workdir, "payload"))


def test_a_root_broker_refuses_a_work_root_other_accounts_cannot_traverse(migrated_url, tmp_path, test_accounts):
    # tmp_path is mode 0700, as the default work root under root's home directory would be
    server = Server(migrated_url, tmp_path, {"BROKER_ENGINE_RUN_AS_BROKER_ACCOUNT": "false"})
    done = subprocess.run([str(BROKER), "serve", "--listen", "127.0.0.1:0"], env=server.env, capture_output=True,
                          text=True, timeout=DEADLINE, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be traversed by the accounts local payloads run as" in lines[0]
    assert "set [engine] workdir to a directory every account can reach" in lines[0]


def test_broker_run_stays_the_invoking_users_own_run_whatever_the_mapping(site, tmp_path):
    # `broker run` as alice, with the catalogue that maps alice to broker-test: the command line is the
    # invoking account's own run, so the payload runs as that account (root here), mapping or not
    doc = tmp_path / "who.xml"
    who = tmp_path / "who"
    doc.write_text(workflow(f'<node id="n"><payload type="sh">id -un > "{who}"</payload></node>'))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), BROKER_ENGINE_USER="alice",
               BROKER_HOSTS_CATALOGUE=str(site.open_root / "hosts.xml"))  # type: ignore[attr-defined]
    done = subprocess.run([str(BROKER), "run", str(doc)], env=env, capture_output=True, text=True,
                          timeout=DEADLINE, check=False)
    assert done.returncode == 0, done.stderr
    assert who.read_text() == pwd.getpwuid(os.geteuid()).pw_name + "\n"
