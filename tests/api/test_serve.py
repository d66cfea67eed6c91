"""``broker serve`` as a process: SIGTERM drains and exits 0, a restart resumes work; PostgreSQL smoke run;
``broker user``; password hashes and the credential cache."""

from __future__ import annotations

import subprocess
import threading

import pytest
import requests

from tests.api.helpers import BROKER, EXAMPLES, Server, add_users, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

HELLO = (EXAMPLES / "hello.xml").read_text(encoding="utf-8")


def test_sigterm_drains_and_a_new_server_resumes_the_running_workflow(migrated_url, tmp_path, db_backend):
    """Also the PostgreSQL smoke run: submit, run, read, admin state, drain, resume."""
    add_users(migrated_url)
    first = Server(migrated_url, tmp_path).start()
    gate = tmp_path / "go"
    try:
        handle = first.core().submit({"workflowContent": workflow(f'<node id="w">{waits_for(gate)}</node>')})
        wait_for(lambda: first.node(handle.id, "w").state == "running", what="the node to run")
        assert first.admin().getServiceState().hosts[0].jobs == 1
        # a call in progress while SIGTERM arrives still gets its answer; one that comes after it finds the port
        # closed, or its idle connection closed: then it was not applied either (checked below)
        answers: list = []
        refused: list = []

        def submit() -> None:
            try:
                answers.append(first.core().submit({"workflowContent": HELLO}))
            except requests.ConnectionError as exc:
                refused.append(exc)

        caller = threading.Thread(target=submit)
        caller.start()
        first.stop(expect=0)
        caller.join()
        assert len(answers) + len(refused) == 1, "the call neither answered nor refused"
        if refused:
            assert stored_workflows(first) == 1, f"a call left without an answer was applied: {refused[0]}"
        assert "stopped" in first.log_text()
        pid = first.process.pid
        assert service_events(first) == [("serve", "started", pid), ("serve", "stopped", pid)]
        second = Server(migrated_url, tmp_path).start()  # the database lock was released
        try:
            assert "workflows resumed" in second.log_text()
            gate.touch()
            assert second.wait_state(handle.id, "succeeded", "failed") == "succeeded"
            if answers:
                assert second.wait_state(answers[0].id, "succeeded", "failed") == "succeeded"
            assert second.core().getStatusInfoForId(handle.globalId).state == "succeeded"
        finally:
            second.stop()
    finally:
        gate.touch()
        first.close()


def stored_workflows(server) -> int:
    from sqlalchemy import func, select

    from broker.persistence.models import Workflow

    with server.sessions()() as s:
        return s.scalar(select(func.count()).select_from(Workflow))


def service_events(server) -> list[tuple[str, str, int]]:
    """(command, what, pid) of every SERVICE event, oldest first."""
    from sqlalchemy import select

    from broker.persistence.models import Event

    with server.sessions()() as s:
        return [(e.properties["command"], e.properties["what"], e.properties["pid"])
                for e in s.scalars(select(Event).where(Event.type == "SERVICE").order_by(Event.id))]


def test_a_second_server_on_the_same_database_refuses_to_start(server):
    other = Server(server.url, server.tmp)
    with pytest.raises(AssertionError, match="another broker"):
        other.start()


def test_broker_user_adds_lists_changes_and_removes_users(migrated_url, tmp_path):
    env = Server(migrated_url, tmp_path).env

    def broker(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BROKER), "user", *args], input=stdin, env=env, capture_output=True, text=True,
                              timeout=120)

    assert broker("add", "carol", "--password-stdin", stdin="first\n").returncode == 0
    assert broker("add", "dave", "--admin", "--password-stdin", stdin="second\n").returncode == 0
    listing = broker("list").stdout.splitlines()
    assert [line.split()[:3] for line in listing[1:]] == [["carol", "user", "yes"], ["dave", "admin", "yes"]]
    assert broker("passwd", "carol", "--password-stdin", stdin="changed\n").returncode == 0
    assert broker("passwd", "nobody", "--password-stdin", stdin="x\n").returncode == 2
    assert broker("add", "Bad Name", "--password-stdin", stdin="x\n").returncode == 2
    assert broker("add", "erin", "--password-stdin", stdin="\n").returncode == 2
    from broker.api.identity import Authenticator
    from broker.errors import InvalidCredentials
    from broker.persistence.db import make_engine, session_factory

    engine = make_engine(migrated_url)
    try:
        auth = Authenticator(session_factory(engine), ttl=0)
        assert auth.user("carol", "changed").role == "user"
        assert auth.user("dave", "second").admin
        with pytest.raises(InvalidCredentials):
            auth.user("carol", "first")
    finally:
        engine.dispose()
    assert broker("remove", "carol").returncode == 0
    assert [line.split()[0] for line in broker("list").stdout.splitlines()[1:]] == ["dave"]


def test_password_hashes_are_salted_and_verified_in_constant_form():
    from broker.api.passwords import hash_password, verify_password

    first, second = hash_password("s3cret ☃"), hash_password("s3cret ☃")
    assert first != second and first.startswith("scrypt$")
    assert verify_password("s3cret ☃", first) and verify_password("s3cret ☃", second)
    assert not verify_password("s3cret", first) and not verify_password("s3cret ☃", None)
    assert not verify_password("x", "garbage") and not verify_password("", first)


def test_the_credential_cache_remembers_a_pair_for_its_ttl_only():
    from broker.api.passwords import CredentialCache, Verified

    cache = CredentialCache(ttl=0.2)
    user = Verified("alice", "user", 1)
    cache.put("alice", "pw", user)
    assert cache.get("alice", "pw") == user
    assert cache.get("alice", "other") is None and cache.get("alic", "epw") is None
    wait_for(lambda: cache.get("alice", "pw") is None, what="the cache entry to expire", deadline=5)
    assert CredentialCache(ttl=0).get("alice", "pw") is None


def test_workflow_url_prefixes_are_checked_after_resolving_the_path(tmp_path):
    from broker.api.submission import _under

    base = (tmp_path / "allowed").as_uri() + "/"
    assert _under((tmp_path / "allowed" / "a.xml").as_uri(), base)
    assert not _under((tmp_path / "allowed" / ".." / "a.xml").as_uri(), base)
    assert not _under((tmp_path / "allowed-not" / "a.xml").as_uri(), base)
    assert _under("https://host/wf/a.xml", "https://host/wf")
    assert not _under("https://host/wfx/a.xml", "https://host/wf")
    assert not _under("https://host/wf/../etc", "https://host/wf/")
    assert not _under("https://host/wf/%2e%2e/etc", "https://host/wf/")


def test_listen_addresses_are_parsed_or_refused():
    from broker.api.server import parse_listen
    from broker.errors import ConfigError

    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_broker_cancel_reaches_the_running_service_through_the_control_path(server, tmp_path):
    handle = server.core().submit({"workflowContent": workflow(f'<node id="w">{waits_for(tmp_path / "never")}</node>')})
    wait_for(lambda: server.node(handle.id, "w").state == "running", what="the node to run")
    done = subprocess.run([str(BROKER), "cancel", handle.globalId], env={**server.env, "BROKER_ENGINE_USER": "alice"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert server.wait_state(handle.id, "cancelled") == "cancelled"
