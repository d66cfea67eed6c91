"""What every worker shares: database reads, the launcher, cached plans, settings.

Plans (the normalised WorkflowSpec of a workflow) never change after submission, so they are cached
read-only and shared across worker threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker import memory
from broker.config import Settings
from broker.description import spawn
from broker.description.model import AnyNode, WorkflowSpec, from_json, walk
from broker.launchers.base import Launcher
from broker.persistence.models import Node, Workflow


class Templates(dict):  # type: ignore[type-arg]
    """Template path -> spec: the description's, then, looked up on first use, those of spawned fragments.

    A spawned node's template names its spawner and attempt (broker.description.spawn): a miss loads that
    spawn's record from the spawner's row, committed before any of its nodes could be looked up.
    """

    def __init__(self, base: dict[str, AnyNode], session_factory: sessionmaker[Session]):
        super().__init__(base)
        self._session_factory = session_factory

    def __missing__(self, key: str) -> AnyNode:
        found = spawn.owner(key)
        if found is None:
            raise KeyError(key)
        node_id, attempt = found
        with self._session_factory() as s:
            row = s.execute(select(Node.template, Node.spawn).where(Node.id == node_id)).one_or_none()
        if row is None or not row.spawn or row.spawn.get("attempt") != attempt:
            raise KeyError(key)
        self.update(spawn.templates(row.spawn, row.template, node_id))
        if key not in self:  # the spawner's own path (a lookup of a parent's template), not one it spawned
            raise KeyError(key)
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(frozen=True, slots=True)
class Plan:
    workflow_id: int
    global_id: str
    spec: WorkflowSpec
    #: template path -> node or sweep spec
    templates: dict[str, AnyNode]


class PlanCache:
    """Thread-safe, read-only cache of workflow plans, loaded from the database on first use."""

    def __init__(self, session_factory: sessionmaker[Session]):
        self._session_factory = session_factory
        self._plans: dict[int, Plan] = {}
        self._lock = threading.Lock()

    def get(self, workflow_id: int) -> Plan:
        plan = self._plans.get(workflow_id)
        if plan is not None:
            return plan
        with self._session_factory() as s:
            row = s.execute(select(Workflow.global_id, Workflow.plan).where(Workflow.id == workflow_id)).one()
        spec = from_json(row.plan)
        plan = Plan(workflow_id, row.global_id, spec, Templates(dict(walk(spec.nodes)), self._session_factory))
        with self._lock:
            self._plans.setdefault(workflow_id, plan)
        return self._plans[workflow_id]

    def forget(self, workflow_id: int) -> None:
        with self._lock:
            plan = self._plans.pop(workflow_id, None)
        if plan is not None and len(plan.templates) >= memory.BIG_NODES:
            del plan
            memory.trim()


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    plans: PlanCache
    #: root of every node work directory
    workdir: Path
    #: the compute resources: catalogue, accounts, SSH pool, staging transports
    resources: Any
    #: one launcher per (host, account), the local launcher for local hosts: a
    #: :class:`broker.launchers.registry.Launchers`
    launchers: Any
    #: whether this broker serves every workflow (``broker serve``) or only those it was given (``broker run``)
    all_workflows: bool = True
    #: the core service's URL elves push to (updateNodeStatus); set by ``broker serve`` once it listens
    push_url: str | None = None
    #: the broker's lease on a PostgreSQL database; None: nothing to check (SQLite's flock lasts as the process)
    lease: Any = None

    def hold(self) -> None:
        """Return only while this broker surely holds the database: a broker stopped past its lease's expiry
        must not start, copy or kill anything another broker now owns. Raises LeaseLost."""
        if self.lease is not None:
            self.lease.ensure()

    def launcher_for(self, host: str, owner: str) -> Launcher:
        """The launcher of ``owner``'s nodes on a catalogue host (``login@host`` is accepted too)."""
        return self.launchers.launcher(host.rpartition("@")[2], owner)

    def launcher_of(self, handle: Any) -> Launcher:
        """The launcher behind a started attempt's handle."""
        return self.launchers.launcher_of(handle.host)

    def attempt_dir(self, workflow_global_id: str, path: str, attempt: int) -> Path:
        """The work directory of one attempt (see broker.ids for the naming); raises ResourceError for one that
        would not lie inside its workflow's directory."""
        from broker.launchers.workdir import attempt_dir

        return attempt_dir(self.workdir, workflow_global_id, path, attempt)
