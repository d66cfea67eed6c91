"""A real ``broker serve`` subprocess on a free port, its users, zeep clients of both services, and raw HTTP
calls past zeep for the hostile-client tests."""

from __future__ import annotations

import base64
import http.client
import os
import re
import selectors
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures import DEADLINE, wait_for

REPO = Path(__file__).resolve().parents[2]
BROKER = REPO / ".venv" / "bin" / "broker"
EXAMPLES = REPO / "conf" / "examples"
#: name -> (password, role) of the users every server has
USERS = {"alice": ("alice-pw", "user"), "bob": ("bob-pw", "user"), "root": ("root-pw", "admin")}
#: the page size the test servers use, small so that paging shows with small workflows
PAGE_SIZE = 7


def workflow(body: str, name: str = "test") -> str:
    """A workflow document around ``body``."""
    return (f'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="{name}">\n'
            + textwrap.dedent(body).strip("\n") + "\n</workflow>\n")


def waits_for(path: Path, seconds: int = 60) -> str:
    """A sh payload that waits (bounded) for ``path`` to appear and fails if it never does."""
    tenths = seconds * 10
    return (f'<payload type="sh">i=0; while [ ! -e "{path}" ] &amp;&amp; [ $i -lt {tenths} ]; '
            f'do sleep 0.1; i=$((i+1)); done; test -e "{path}"</payload>')


def add_users(url: str) -> None:
    """Create the test users in a migrated database."""
    from broker.api.passwords import hash_password
    from broker.persistence.db import make_engine, session_factory
    from broker.persistence import repository

    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as s:
            for name, (password, role) in USERS.items():
                user = repository.ensure_user(s, name, role)
                user.password_hash = hash_password(password)
    finally:
        engine.dispose()


@dataclass
class Server:
    """A ``broker serve`` process."""

    url: str
    tmp: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    base: str = ""
    _clients: dict[tuple[str, str | None, str | None], Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
        # Most servers here test the API, not accounts: a single-user broker whose payloads run as the
        # account running the tests, whoever submits them (test_runas.py maps users to accounts instead).
        return {**clean, "BROKER_DATABASE_URL": self.url, "BROKER_ENGINE_WORKDIR": str(self.tmp / "work"),
                "XDG_STATE_HOME": str(self.tmp / "state"), "BROKER_API_PAGE_SIZE": str(PAGE_SIZE),
                "BROKER_LOGGING_LEVEL": "INFO", "BROKER_ENGINE_RUN_AS_BROKER_ACCOUNT": "true", **self.env_extra}

    def start(self, wait: bool = True) -> Server:
        """Start the server on a free port and wait for its ``serving on`` line (``wait``)."""
        self.log = open(self.tmp / "serve.log", "a", encoding="utf-8")
        self.process = subprocess.Popen([str(BROKER), "serve", "--listen", "127.0.0.1:0"], env=self.env,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        if not wait:
            return self
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        end = time.monotonic() + DEADLINE
        line = ""
        while not line.startswith("serving on "):
            if self.process.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"broker serve did not start: {self.log_text()[-3000:]}")
            if selector.select(timeout=0.5):
                line = self.process.stdout.readline()
        self.base = line.split()[2]
        return self

    def stop(self, expect: int | None = 0) -> int:
        """SIGTERM, wait for the exit, return its status (asserted when ``expect`` is given)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=DEADLINE)
        self.log.close()
        if expect is not None:
            assert code == expect, self.log_text()[-3000:]
        return code

    def log_text(self) -> str:
        return (self.tmp / "serve.log").read_text(encoding="utf-8", errors="replace")

    def client(self, path: str = "/broker", user: str | None = "alice", password: str | None = None) -> Any:
        """A zeep client of ``path`` authenticating with HTTP Basic (None: no credentials)."""
        key = (path, user, password)
        if key not in self._clients:
            import requests
            import zeep
            from zeep.transports import Transport

            session = requests.Session()
            if user is not None:
                session.auth = (user, password if password is not None else USERS[user][0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._clients[key] = zeep.Client(self.base + path + "?wsdl", transport=Transport(session=session),
                                                 settings=zeep.Settings(xml_huge_tree=True))
        return self._clients[key]

    def core(self, user: str | None = "alice", password: str | None = None) -> Any:
        return self.client("/broker", user, password).service

    def admin(self, user: str | None = "root", password: str | None = None) -> Any:
        return self.client("/admin", user, password).service

    # ------------------------------------------------------------------------------------- database

    def sessions(self) -> Any:
        from broker.persistence.db import make_engine, session_factory

        if not hasattr(self, "_sessions"):
            self._engine = make_engine(self.url)
            self._sessions = session_factory(self._engine)
        return self._sessions

    def workflow_state(self, workflow_id: int) -> str:
        from broker.persistence.models import Workflow

        with self.sessions()() as s:
            return s.get(Workflow, workflow_id).state

    def wait_state(self, workflow_id: int, *states: str) -> str:
        return wait_for(lambda: (st := self.workflow_state(workflow_id)) in states and st,
                        what=f"workflow {workflow_id} to be {' or '.join(states)}")

    def node(self, workflow_id: int, path: str) -> Any:
        from sqlalchemy import select

        from broker.persistence.models import Node

        with self.sessions()() as s:
            return s.execute(select(Node).where(Node.workflow_id == workflow_id, Node.path == path)).scalar_one()

    def close(self) -> None:
        if hasattr(self, "_engine"):
            self._engine.dispose()


def fault_code(excinfo: Any) -> str:
    """``Client.NotFound`` from a zeep Fault (whose code is a prefixed QName)."""
    return str(excinfo.value.code).split(":")[-1]


def all_events(server):
    """Every event root may read, page after page of getStatusInfo."""
    out, last = [], 0
    while page := server.core("root").getStatusInfo(last):
        out.extend(page)
        last = page[-1].eventId
    return out


# ------------------------------------------------------------------ raw HTTP, past zeep (hostile clients)

ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CORE = "urn:workflow-broker:core:v1"
#: where the slow and idle clients connect from (loopback, another address than the calls measured)
SLOW = "127.0.0.2"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


AUTH = basic("alice", "alice-pw")


def call(server, body: bytes | None, *, content_type: str = "text/xml; charset=utf-8", path: str = "/broker",
         method: str = "POST", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    url = urllib.parse.urlsplit(server.base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        all_headers = {"Content-Type": content_type, "Authorization": AUTH, **(headers or {})}
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def envelope(inner: str, header: str = "") -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="{ENV}" xmlns:c="{CORE}">{header}<s:Body>{inner}</s:Body>'
            "</s:Envelope>").encode()


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
