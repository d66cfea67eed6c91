"""The real ``broker`` command against real databases: a runner, database reads, and test workflows."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from tests.fixtures import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "conf" / "examples"
BROKER = REPO / ".venv" / "bin" / "broker"
#: seconds any one wait of a test may take before the test fails (a bound on polling, never a sleep)
DEADLINE = 60.0
#: the broker user the tests submit as
OWNER = "tester"


def workflow(body: str, name: str = "test") -> str:
    """A workflow document around ``body``."""
    return (f'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="{name}">\n'
            + textwrap.dedent(body).strip("\n") + "\n</workflow>\n")


def waits_for(path: Path, seconds: int = 60, *, first: str = "") -> str:
    """A sh payload that runs ``first``, then waits (bounded) for ``path`` to appear; fails if it never does."""
    tenths = seconds * 10
    return (f'<payload type="sh">{first}i=0; while [ ! -e "{path}" ] &amp;&amp; [ $i -lt {tenths} ]; '
            f'do sleep 0.1; i=$((i+1)); done; test -e "{path}"</payload>')


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Cli:
    """Runs ``broker`` against one database and work directory, and reads that database."""

    def __init__(self, url: str, tmp: Path):
        self.url = url
        self.tmp = tmp
        self.workdir = tmp / "work"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
        self.env = {**clean, "BROKER_ENGINE_USER": OWNER, "XDG_STATE_HOME": str(tmp / "state"),
                    "BROKER_ENGINE_WORKDIR": str(self.workdir), "COLUMNS": "200"}
        self._engine: Any = None
        self._started: list[subprocess.Popen] = []

    # ------------------------------------------------------------------------------------------- runs

    def args(self, command: str, *args: str) -> list[str]:
        """The argv of a command against this database (``--db`` goes after the command)."""
        extra = ["--workdir", str(self.workdir)] if command in ("run", "resume") else []
        return [str(BROKER), command, *args, "--db", self.url, *extra]

    def __call__(self, command: str, *args: str, stdin: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to its end."""
        return subprocess.run(self.args(command, *args), input=stdin, capture_output=True, text=True,
                              timeout=DEADLINE * 2, env={**self.env, **(env or {})}, cwd=self.tmp)

    def start(self, command: str, *args: str, **popen: Any) -> subprocess.Popen:
        """Start a command in the background (stopped at the end of the test if still running)."""
        options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        options.update(popen)
        options.setdefault("env", self.env)
        proc = subprocess.Popen(self.args(command, *args), cwd=self.tmp, **options)
        self._started.append(proc)
        return proc

    def file(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    # ------------------------------------------------------------------------------------------ reads

    @property
    def sessions(self) -> Any:
        from broker.persistence.db import make_engine, session_factory

        if self._engine is None:
            self._engine = make_engine(self.url)
        return session_factory(self._engine)

    def workflows(self) -> list[Any]:
        from sqlalchemy import select

        from broker.persistence.models import Workflow

        with self.sessions() as s:
            return list(s.scalars(select(Workflow).order_by(Workflow.id)))

    def nodes(self, workflow_id: int | None = None) -> dict[str, Any]:
        """Path -> node row of a workflow (the only one when not given)."""
        from sqlalchemy import select

        from broker.persistence.models import Node

        if workflow_id is None:
            (workflow_id,) = [w.id for w in self.workflows()]
        with self.sessions() as s:
            return {n.path: n for n in s.scalars(select(Node).where(Node.workflow_id == workflow_id))}

    def admin_actions(self) -> list[Any]:
        """Every ADMIN_ACTION event, oldest first."""
        from sqlalchemy import select

        from broker.persistence.models import Event

        with self.sessions() as s:
            return list(s.scalars(select(Event).where(Event.type == "ADMIN_ACTION").order_by(Event.id)))

    def node_state(self, path: str) -> str | None:
        if not self.workflows():
            return None
        node = self.nodes().get(path)
        return None if node is None else node.state

    def wait_node(self, path: str, state: str) -> Any:
        """Wait until the only workflow's node ``path`` is in ``state``; returns the node row."""
        return wait_for(lambda: self.node_state(path) == state and self.nodes()[path],
                        what=f"node {path} to be {state}")

    def close(self) -> None:
        for proc in self._started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=DEADLINE)
        if self._engine is not None:
            self._engine.dispose()
