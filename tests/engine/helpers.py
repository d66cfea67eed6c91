"""The engine tests' harness: workflow documents, a real engine to submit to and wait on, payload markers."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from broker.config import Settings
from broker.description.load import load_description
from broker.engine import Engine
from broker.persistence.models import Event, Node, Workflow
from broker.states import WORKFLOW_TERMINAL, WorkflowState

#: seconds a test waits for a workflow before it fails (a bound, never a sleep)
DEADLINE = 60.0
HEADER = '<workflow xmlns="urn:workflow-broker:workflow:1.0" name="{name}"{attrs}>'


def workflow(body: str, name: str = "test", **attrs: Any) -> bytes:
    """A workflow document around ``body`` (nodes, profiles...)."""
    text = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return (HEADER.format(name=name, attrs=text) + textwrap.dedent(body) + "</workflow>").encode()


class Broker:
    """A started engine plus helpers to submit documents and wait for their end."""

    def __init__(self, url: str, tmp: Path, all_workflows: bool = True, **engine_settings: Any):
        import dataclasses

        from broker.config import EngineSettings
        from broker.configload import load_settings

        # These tests are about the engine's semantics, not about accounts: a single-user broker, whose
        # payloads run as the account running the tests (tests/api/test_runas.py tests the mapping).
        engine_settings.setdefault("run_as_broker_account", True)
        base = load_settings(environ={})
        self.settings: Settings = dataclasses.replace(
            base.replace("database", url=url),
            engine=dataclasses.replace(EngineSettings(), workdir=str(tmp / "work"), **engine_settings),
        ).replace("staging", roots=(str(tmp),))
        self.url = url
        self.tmp = tmp
        self.all_workflows = all_workflows
        self.states: dict[int, WorkflowState] = {}
        self._changed = threading.Condition()
        self.engine: Engine | None = None

    def _listener(self, workflow_id: int, global_id: str, state: WorkflowState, counts: dict[str, int]) -> None:
        with self._changed:
            self.states[workflow_id] = state
            self._changed.notify_all()

    def start(self) -> Broker:
        self.engine = Engine(self.settings, listeners=[self._listener], all_workflows=self.all_workflows).start()
        return self

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.stop()
            self.engine = None

    def submit(self, document: bytes, owner: str = "alice") -> int:
        assert self.engine is not None
        spec = load_description(document, self.settings, filename="test.xml")
        return self.engine.submit(spec, document.decode(), owner).workflow_id

    def wait(self, workflow_id: int, deadline: float = DEADLINE) -> WorkflowState:
        end = time.monotonic() + deadline
        with self._changed:
            while self.states.get(workflow_id) not in WORKFLOW_TERMINAL:
                left = end - time.monotonic()
                if left <= 0:
                    pytest.fail(f"workflow {workflow_id} did not finish in {deadline} s "
                                f"(state {self.states.get(workflow_id)}; nodes {self.node_states(workflow_id)})")
                self._changed.wait(left)
            return self.states[workflow_id]

    def run(self, document: bytes, owner: str = "alice") -> tuple[int, WorkflowState]:
        workflow_id = self.submit(document, owner)
        return workflow_id, self.wait(workflow_id)

    # ------------------------------------------------------------------------------------------ reads

    def sessions(self):
        assert self.engine is not None
        return self.engine.sessions()

    def nodes(self, workflow_id: int) -> dict[str, Node]:
        with self.sessions() as s:
            return {n.path: n for n in s.scalars(select(Node).where(Node.workflow_id == workflow_id))}

    def node_states(self, workflow_id: int) -> dict[str, str]:
        return {path: n.state for path, n in self.nodes(workflow_id).items()}

    def events(self, workflow_id: int) -> list[Event]:
        with self.sessions() as s:
            return list(s.scalars(select(Event).where(Event.workflow_id == workflow_id).order_by(Event.id)))

    def workflow(self, workflow_id: int) -> Workflow:
        with self.sessions() as s:
            return s.get(Workflow, workflow_id)


def marker(tmp: Path, name: str) -> str:
    """A shell snippet that appends one line to a per-node marker file (to count how often a node ran)."""
    return f'echo "$WB_NODE_PATH $WB_ATTEMPT" >> "{tmp}/{name}.marker"'


def lines(tmp: Path, name: str) -> list[str]:
    path = tmp / f"{name}.marker"
    return path.read_text().splitlines() if path.exists() else []


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie (exited, not yet reaped by PID 1 here) is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
