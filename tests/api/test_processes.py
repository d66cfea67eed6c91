"""``[api] processes = N``: real ``broker serve`` processes on one port (SO_REUSEPORT). The API-only ones
answer status reads and event pages from the database, forward every other call (writes first) to the
broker's own process, answer ``/health`` with ``api``, and stop with it."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
from xml.sax.saxutils import escape

import pytest

from tests.api.helpers import (BROKER, EXAMPLES, Server, add_users, address, basic, envelope, post)
from tests.fixtures import DEADLINE, wait_for

pytestmark = pytest.mark.slow

ALICE = basic("alice", "alice-pw")
_GID = re.compile(rb"<(?:\w+:)?globalId>([^<]+)</")


def health(host: str, port: int) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=DEADLINE)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def once(host: str, port: int, body: bytes, auth: str = ALICE) -> tuple[int, bytes]:
    """One call on a connection of its own (so that the kernel may hand it to any of the processes)."""
    connection = http.client.HTTPConnection(host, port, timeout=DEADLINE)
    try:
        return post(connection, body, auth)
    finally:
        connection.close()


def submit_body(name: str) -> bytes:
    text = escape((EXAMPLES / name).read_text(encoding="utf-8"))
    return envelope(f"<c:submit><c:submission><c:workflowContent>{text}</c:workflowContent></c:submission></c:submit>")


def status_body(gid: str) -> bytes:
    return envelope(f"<c:getStatusInfoForId><c:globalId>{gid}</c:globalId></c:getStatusInfoForId>")


def state_of(host: str, port: int, gid: str) -> bytes:
    status, answer = once(host, port, status_body(gid))
    assert status == 200, answer
    return re.search(rb"<s0:state>([^<]+)<", answer).group(1)


@pytest.fixture
def two(migrated_url, tmp_path):
    add_users(migrated_url)
    server = Server(migrated_url, tmp_path, {"BROKER_API_PROCESSES": "2"}).start()
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def forward_address(server: Server) -> str:
    found = wait_for(lambda: re.search(r"forwarding the other calls to (\S+)", server.log_text()),
                     what="the API-only process to start")
    return found.group(1)


def test_two_processes_share_the_port_and_both_serve_calls(two):
    host, port = address(two)
    forward_address(two)
    seen: set[bytes] = set()
    # each connection is a new 4-tuple: the kernel spreads them over both listening sockets
    wait_for(lambda: seen.add(health(host, port)[1].strip()) or seen >= {b"active", b"api"},
             what="answers from the broker's process and from the API-only one")
    gids = []
    for _ in range(8):  # submits land on either process: the API-only one forwards them
        status, answer = once(host, port, submit_body("hello.xml"))
        assert status == 200, answer
        gids.append(_GID.search(answer).group(1).decode())
    for gid in gids:
        wait_for(lambda gid=gid: state_of(host, port, gid) == b"succeeded", what=f"{gid} succeeded")
    assert len(set(gids)) == 8


def test_an_api_only_process_reads_from_the_database_and_forwards_the_rest(two, tmp_path):
    forward = forward_address(two)
    with socket.socket() as probe:  # a free port for a third process, reached on its own
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**two.env, "BROKER_API_LISTEN": f"127.0.0.1:{port}"}
    with open(tmp_path / "api-only.log", "w") as log:
        third = subprocess.Popen([str(BROKER), "serve", "--api-only", forward], env=env, stderr=log)
    try:
        wait_for(lambda: _answers(port), what="the API-only process listening")
        assert health("127.0.0.1", port) == (200, b"api")
        status, answer = once("127.0.0.1", port, submit_body("hello.xml"))  # forwarded: the writer is elsewhere
        assert status == 200, answer
        gid = _GID.search(answer).group(1).decode()
        wait_for(lambda: state_of("127.0.0.1", port, gid) == b"succeeded", what="the workflow succeeded")
        status, mine = once("127.0.0.1", port, status_body(gid))
        assert b"<s0:progress>100.0</s0:progress>" in mine  # the committed counts in the workflow's row
        page_call = envelope("<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>")
        status, page = once("127.0.0.1", port, page_call)
        assert status == 200 and page.count(b"<tns:return>") == 7  # the test servers' page size
        # the same bytes as the broker's own process writes (its answers may come from either process)
        direct = forward.rpartition(":")
        assert once(direct[0], int(direct[2]), status_body(gid))[1] == mine
        assert once(direct[0], int(direct[2]), page_call)[1] == page
        # an estimated end is process 0's (its estimates' cache): forwarded, the same answer
        estimate = envelope(f"<c:getStatusInfoForId><c:globalId>{gid}</c:globalId><c:estimate>true</c:estimate>"
                            "</c:getStatusInfoForId>")
        assert once("127.0.0.1", port, estimate) == once(direct[0], int(direct[2]), estimate)
        status, answer = once("127.0.0.1", port, status_body(gid), basic("alice", "wrong"))
        assert status == 401 and b"InvalidCredentials" in answer
        status, answer = once("127.0.0.1", port, status_body(gid), basic("bob", "bob-pw"))
        assert status == 500 and b"NotFound" in answer  # bob may not see alice's workflow
        status, wsdl = _get("127.0.0.1", port, "/broker?wsdl")
        assert status == 200 and b"getStatusInfoForId" in wsdl
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=DEADLINE) == 0


def test_stopping_the_broker_stops_its_api_only_processes(two):
    forward_address(two)
    children = [int(pid) for pid in re.search(r"API-only processes on \S+ \(pids ([\d ]+)\)",
                                              two.log_text()).group(1).split()]
    assert len(children) == 1
    two.stop()
    for pid in children:
        wait_for(lambda pid=pid: not _alive(pid), what=f"API-only process {pid} gone")


def _answers(port: int) -> bool:
    try:
        return health("127.0.0.1", port)[0] == 200
    except OSError:
        return False


def _get(host: str, port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=DEADLINE)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent, which has exited too) is gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_an_api_only_process_sees_a_changed_password_within_the_login_cache_time(migrated_url, tmp_path):
    add_users(migrated_url)
    server = Server(migrated_url, tmp_path, {"BROKER_API_PROCESSES": "2", "BROKER_API_CREDENTIAL_TTL": "1"}).start()
    try:
        host, port = address(server)
        forward_address(server)
        status_call = envelope("<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>")
        assert once(host, port, status_call)[0] == 200  # cached now in whichever process answered
        changed = subprocess.run([str(BROKER), "user", "passwd", "alice", "--password-stdin"], input="new-pw\n",
                                 env=server.env, capture_output=True, text=True, timeout=DEADLINE)
        assert changed.returncode == 0, changed.stderr
        # every process, on connections of their own, refuses the old password within the cache time
        wait_for(lambda: all(once(host, port, status_call)[0] == 401 for _ in range(8)),
                 what="the old password refused by every process", deadline=10)
        assert all(once(host, port, status_call, basic("alice", "new-pw"))[0] == 200 for _ in range(8))
    finally:
        server.stop()


def test_the_database_probe_of_an_api_only_process_says_when_it_cannot_read():
    from broker.api.apionly import probe
    from broker.persistence.db import make_engine

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    db = make_engine(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
    try:
        assert probe(db)() is False
    finally:
        db.dispose()
