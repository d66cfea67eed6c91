"""A real ``broker serve`` subprocess on a free port, its users, and zeep clients of both services."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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

    def start(self) -> Server:
        """Start the server on a free port and wait for its ``serving on`` line."""
        self.log = open(self.tmp / "serve.log", "a", encoding="utf-8")
        self.process = subprocess.Popen([str(BROKER), "serve", "--listen", "127.0.0.1:0"], env=self.env,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    """One server per test module on its own SQLite database, with the test users."""
    tmp = tmp_path_factory.mktemp("serve")
    db = tmp / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    allowed = tmp / "allowed"
    allowed.mkdir()
    srv = Server(url, tmp, {"BROKER_API_WORKFLOW_URLS": allowed.as_uri() + "/"}).start()
    srv.allowed = allowed  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()
