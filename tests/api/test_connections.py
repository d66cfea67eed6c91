"""Fair service under hostile clients, through a real ``broker serve`` and raw sockets: slow and idle
connections (opened from 127.0.0.2) never take the request threads, and are closed after their deadlines
with one WARNING line each; connections without a complete request are capped per address; floods of
hostile envelopes and of logins leave another user's getStatusInfoForId p99 under one second."""

from __future__ import annotations

import base64
import http.client
import re
import shutil
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from lxml import etree

from tests.api.conftest import EXAMPLES, Server, add_users
from tests.fixtures import DEADLINE, wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CORE = "urn:workflow-broker:core:v1"
SLOW = "127.0.0.2"
#: the issue's target for another user's status calls while the service is under attack
P99_TARGET = 1.0
#: the module server's deadlines: short, so slow connections are closed within the test
HEADER_TIMEOUT = 6


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def envelope(inner: str) -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="{ENV}" xmlns:c="{CORE}"><s:Body>{inner}</s:Body>'
            "</s:Envelope>").encode()


def start(tmp, sqlite_template, env: dict[str, str]) -> Server:
    shutil.copy(sqlite_template, tmp / "broker.db")
    url = f"sqlite:///{tmp / 'broker.db'}"
    add_users(url)
    return Server(url, tmp, env).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, sqlite_template) -> Iterator[Server]:
    """Four request threads (fewer than the slow clients), no per-address cap, short deadlines."""
    srv = start(tmp_path_factory.mktemp("serve-conn"), sqlite_template, {
        "BROKER_API_THREADS": "4", "BROKER_API_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "BROKER_API_MAX_PENDING_PER_ADDRESS": "0"})
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


@pytest.fixture(scope="module")
def status_body(server) -> bytes:
    handle = server.core().submit({"workflowContent": (EXAMPLES / "hello.xml").read_text(encoding="utf-8")})
    return envelope(f"<c:getStatusInfoForId><c:globalId>{handle.globalId}</c:globalId></c:getStatusInfoForId>")


def address(server) -> tuple[str, int]:
    url = urllib.parse.urlsplit(server.base)
    return url.hostname, url.port


def post(connection: http.client.HTTPConnection, body: bytes, auth: str) -> tuple[int, bytes]:
    connection.request("POST", "/broker", body=body, headers={"Content-Type": "text/xml", "Authorization": auth})
    response = connection.getresponse()
    return response.status, response.read()


def status_latencies(server, body: bytes, calls: int) -> list[float]:
    """Seconds each of ``calls`` getStatusInfoForId calls of alice took (one keep-alive connection, warm)."""
    connection = http.client.HTTPConnection(*address(server), timeout=DEADLINE)
    auth = basic("alice", "alice-pw")
    try:
        assert post(connection, body, auth)[0] == 200  # the login is checked here, outside the measure
        latencies = []
        for _ in range(calls):
            t0 = time.perf_counter()
            status, answer = post(connection, body, auth)
            latencies.append(time.perf_counter() - t0)
            assert status == 200 and b"getStatusInfoForIdResponse" in answer
        return latencies
    finally:
        connection.close()


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))]


class Trickler:
    """A raw connection from 127.0.0.2 that sends ``head`` at once, then one byte of ``rest`` a second."""

    def __init__(self, server, head: bytes, rest: bytes):
        self.sock = socket.create_connection(address(server), timeout=DEADLINE, source_address=(SLOW, 0))
        self.sock.sendall(head)
        self.rest = rest
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle)
        self.thread.start()

    def _trickle(self) -> None:
        for byte in self.rest:
            if self.stop.wait(1.0):  # the pace of a hostile client, not a wait for a condition
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return

    def answer(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        data = b""
        while chunk := self.sock.recv(65536):
            data += chunk
        self.stop.set()
        self.thread.join()
        self.sock.close()
        return data


def fault_code(answer: bytes) -> str:
    body = answer.partition(b"\r\n\r\n")[2]
    return etree.fromstring(body).find(f"{{{ENV}}}Body/{{{ENV}}}Fault").findtext("faultcode").split(":")[-1]


def test_slow_and_idle_connections_neither_take_the_threads_nor_slow_other_users(server, status_body):
    heads = [Trickler(server, b"POST /broker HTTP/1.1\r\n", b"Host: x\r\n" * 100) for _ in range(5)]
    bodies = [Trickler(server, b"POST /broker HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                                b"Content-Length: 4000\r\n\r\n", b"<" * 4000) for _ in range(5)]
    idle = socket.create_connection(address(server), timeout=DEADLINE, source_address=(SLOW, 0))
    try:
        latencies = status_latencies(server, status_body, 60)
        assert p99(latencies) < P99_TARGET, sorted(latencies)[-5:]
        for slow in heads + bodies:  # then each is refused after its deadline, with a fault
            answer = slow.answer()
            assert answer.startswith(b"HTTP/1.1 408 ") and fault_code(answer) == "Client.InvalidRequest", answer[:300]
        assert idle.recv(100) == b""  # closed without a word
    finally:
        for slow in heads + bodies:
            slow.stop.set()
        idle.close()
    log = server.log_text()
    warnings = [line for line in log.splitlines() if f"connection from {SLOW}:" in line]
    assert len(warnings) == 10 and all("WARNING" in line for line in warnings), warnings
    assert sum("header_timeout" in line for line in warnings) == 5
    assert sum("min_body_rate" in line for line in warnings) == 5
    assert "Traceback" not in log


def latencies_under(server, status_body, attackers: list[tuple[bytes, str]]) -> tuple[list[float], list]:
    """Alice's status call latencies while each (body, Authorization) of ``attackers`` is posted in a loop
    on its own connection; and the (status, fault code) of every attacking call."""
    stop, answers = threading.Event(), []

    def attack(body: bytes, auth: str) -> None:
        connection = http.client.HTTPConnection(*address(server), timeout=DEADLINE)
        while not stop.is_set():
            try:
                status, answer = post(connection, body, auth)
            except ConnectionError:  # refused while still sending: an answer too
                connection.close()
                answers.append((0, "reset"))
                continue
            found = re.search(rb"faultcode>[^:<]*:([^<]*)<", answer)
            answers.append((status, found.group(1).decode() if found else None))
        connection.close()

    threads = [threading.Thread(target=attack, args=attacker) for attacker in attackers]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= len(attackers), what="the attacking calls to be answered")
        return status_latencies(server, status_body, 60), answers
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_floods_of_hostile_envelopes_leave_another_user_s_calls_fast(server, status_body):
    bob = basic("bob", "bob-pw")
    floods = [(envelope("<c:getStatusInfo " + " ".join(f'a{i}="x"' for i in range(100_000)) + "/>"), bob),
              (envelope("<c:getStatusInfo>" + "<c:lastId>1</c:lastId>" * 200_000 + "</c:getStatusInfo>"), bob),
              (envelope("<c:getStatusInfo>" + "<x>" * 100_000 + "</x>" * 100_000 + "</c:getStatusInfo>"), bob)]
    latencies, answers = latencies_under(server, status_body, floods)
    assert p99(latencies) < P99_TARGET, sorted(latencies)[-5:]
    assert {code for _, code in answers} == {"Client.InvalidRequest"}, set(answers)


def test_a_storm_of_logins_leaves_the_calls_of_users_already_logged_in_fast(server, status_body):
    guesses = [(status_body, basic("bob", f"guess-{i}")) for i in range(12)]
    latencies, answers = latencies_under(server, status_body, guesses)
    assert p99(latencies) < P99_TARGET, sorted(latencies)[-5:]
    assert {status for status, _ in answers} <= {401, 503} and 401 in {status for status, _ in answers}


def test_connections_without_a_complete_request_are_capped_per_address(tmp_path, sqlite_template):
    srv = start(tmp_path, sqlite_template, {"BROKER_API_MAX_PENDING_PER_ADDRESS": "3"})
    host, port = address(srv)
    body, auth = envelope("<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>"), basic("alice", "alice-pw")

    def slow_client() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(host, port, timeout=DEADLINE, source_address=(SLOW, 0))

    try:
        # keep-alive connections between two requests do not count
        kept = [slow_client() for _ in range(3)]
        assert [post(c, body, auth)[0] for c in kept] == [200] * 3
        partial = []
        for _ in range(3):
            partial.append(socket.create_connection((host, port), timeout=DEADLINE, source_address=(SLOW, 0)))
            partial[-1].sendall(b"POST /broker HTTP/1.1\r\n")
        refused = socket.create_connection((host, port), timeout=DEADLINE, source_address=(SLOW, 0))
        answer = b""
        while chunk := refused.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 429 ") and fault_code(answer) == "Client.LimitExceeded", answer[:300]
        # another address is not limited, and the address gets its place back once a connection closes
        assert post(http.client.HTTPConnection(host, port, timeout=DEADLINE), body, auth)[0] == 200
        partial.pop().close()
        wait_for(lambda: post(slow_client(), body, auth)[0] == 200, what="a connection from 127.0.0.2 to be served")
        assert "connection from 127.0.0.2 refused" in srv.log_text()
        for sock in partial:
            sock.close()
        for connection in kept:
            connection.close()
    finally:
        srv.stop(expect=None)
        srv.close()
