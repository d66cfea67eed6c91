"""The engine of an API process without one (``[api] writes = rows``): reads from the database, writes as rows.

An API process on another machine than the active broker serves the whole API with the very code of
``broker serve`` (:mod:`broker.api.core`, :mod:`broker.api.admin`): the services read the database
themselves and make every change through a method of ``api.engine``. Here that engine is a
:class:`RowsEngine`: each change (submit, cancel, restart, deletes, archive records, an elf's push) is a
request row (:mod:`broker.persistence.requests`) that the active writer applies (:mod:`broker.applier`);
the call waits for its answer, at most ``[api] request_timeout`` seconds, and withdraws the row when it is
still pending then (a Server fault says so). A request the writer refused comes back as the error it raised
(its class is recorded on the row), so that the client gets the fault a direct call gives.

The caller is authenticated, and its rights checked, here, as in ``broker serve``; the row names who asks
(``user:<name>``, ``admin:<name>``, ``elf:<node>/<attempt>``) and the applier checks a user's ownership again.
Deletes remove the workflows' work directories where they are, on the writer's machine: the row says
``remove_dirs`` and the applier's Deleter does it (:class:`RowDeleter` plans here and asks there).
"""

from __future__ import annotations

from typing import Any

from broker import errors
from broker.admin.delete import Deleter
from broker.errors import BrokerError
from broker.persistence import requests
from broker.persistence.changes import Accepted
from broker.persistence.queries import Deletion

#: the error classes a failed request is raised as again (by name, as the row records it); others: BrokerError
RAISED = {cls.__name__: cls for cls in (errors.ConfigError, errors.ArgumentError, errors.LimitExceeded,
                                        errors.NotFound, errors.NotAuthorized, errors.StateError,
                                        errors.InvalidCredentials, errors.ResourceError)}


class RecordedDescriptionError(errors.DescriptionError):
    """Raised for a description the writer rejected: its problem lines, as recorded on the request."""

    def __init__(self, text: str):
        lines = [line for line in text.splitlines() if line.strip()]
        self.problems = tuple(lines)
        BrokerError.__init__(self, lines[0] if lines else "invalid workflow description")


class RowsEngine:
    """What the API services need of an engine, for a process that runs none (see the module docstring)."""

    def __init__(self, settings: Any, db: Any):
        from broker.persistence.db import session_factory

        self.settings = settings
        self.db = db
        self.sessions = session_factory(db)
        #: no in-process counts: a workflow's progress is read from the counts the writer commits in its row
        self.progress = None
        self.timeout = settings.api.request_timeout
        self._resources: Any = None

    # ------------------------------------------------------------------------------------------ reads

    @property
    def resources(self) -> Any:
        """The host catalogue and accounts, as this machine's configuration gives them (getHosts, archive)."""
        if self._resources is None:
            from broker.resources import Resources
            from broker.resources.accounts import load_table

            with self.sessions() as s:
                accounts = load_table(s)
            self._resources = Resources(self.settings, accounts=accounts)
        return self._resources

    # ---------------------------------------------------------------------------------------- changes

    def ask(self, kind: str, requested_by: str, payload: dict[str, Any], workflow_gid: str | None = None) -> dict:
        """Insert a request and wait for the writer's answer; raises what refused it, or on timeout."""
        with self.sessions.begin() as s:
            request_id = requests.insert(s, kind, requested_by, payload, workflow_gid=workflow_gid)
        row = requests.wait(self.sessions, request_id, self.timeout)
        if row is None:
            raise BrokerError(f"no active broker applied the {kind} within {self.timeout:g} s ([api] "
                              "request_timeout); it was withdrawn: nothing changed, try again")
        if row.state == requests.APPLIED:
            return row.result or {}
        if row.state != requests.FAILED:
            raise BrokerError(f"the {kind} was {row.state}")
        if row.error_type == "DescriptionError":
            raise RecordedDescriptionError(row.error or "")
        raise RAISED.get(row.error_type, BrokerError)(row.error or f"the {kind} failed")

    def submit(self, spec: Any, descriptor: str, owner: str, *, origin: Any = None, **options: Any) -> Accepted:
        gid = requests.reserve_global_id()
        result = self.ask("submit", f"user:{owner}", {
            "descriptor": descriptor, "filename": "<workflowContent>", "owner": owner,
            "arguments": dict(spec.arguments or ()), "origin": list(origin) if origin else None,
            "options": {k: v for k, v in options.items() if v is not None}}, workflow_gid=gid)
        return Accepted(int(result["workflow_id"]), str(result["global_id"]))

    def cancel(self, workflow_id: int, actor: str) -> None:
        self.ask("cancel", actor, {"workflow_id": workflow_id, "node_ids": None})

    def cancel_nodes(self, node_ids: Any, actor: str) -> None:
        node_ids = [int(n) for n in node_ids]
        from broker.persistence.models import Node

        with self.sessions() as s:
            workflow_id = s.get(Node, node_ids[0]).workflow_id
        self.ask("cancel", actor, {"workflow_id": workflow_id, "node_ids": node_ids})

    def restart(self, workflow_id: int, actor: str, node_ids: tuple[int, ...] | None = None) -> None:
        self.ask("restart", actor, {"workflow_id": workflow_id,
                                    "node_ids": None if node_ids is None else list(node_ids)})

    def note(self, workflow_id: int | None, type: str, actor: str, message: str,
             properties: dict[str, Any] | None = None) -> None:
        self.ask("archive", actor, {"workflow_id": workflow_id, "message": message, "properties": properties})

    def pushed(self, node_id: int, attempt: int, *, progress: Any, outputs: Any, result: Any, receipt: Any) -> None:
        """An elf's report: applied by the writer's monitoring controller; ``receipt`` learns the outcome."""
        answer = self.ask("push", f"elf:{node_id}/{attempt}", {
            "node_id": node_id, "attempt": attempt, "progress": None if progress is None else list(progress),
            "outputs": [[name, value] for name, value in outputs],
            "result": None if result is None else [result.outcome, result.exit_code, result.message]})
        if answer.get("ignored"):
            receipt.set(str(answer["ignored"]))
        else:
            receipt.tell(None)

    def forget(self, workflow_id: int) -> None:
        pass  # no plans cached here

    def deleter(self, actor: str, require_drained: bool) -> Deleter:
        """The API's Deleter here: plans from the database, deletes through a request."""
        return RowDeleter(self, actor, require_drained)


class RowDeleter(Deleter):
    """Plans a delete from the database here; the writer's machine deletes (rows, then work directories)."""

    def __init__(self, engine: RowsEngine, actor: str, require_drained: bool):
        # no journal nor work directory root here: the applier's Deleter has them
        super().__init__(engine.sessions, engine, actor, workdir_root=None, journal=None,  # type: ignore[arg-type]
                         require_drained=require_drained)
        self.rows = engine

    def recover(self) -> list[str]:
        return []  # the writer's machine finishes its own interrupted deletions

    def delete(self, rows: Any, what: str, *, skipped: Any = (), last_event_id: int | None = None,
               properties: dict[str, Any] | None = None) -> Deletion:
        rows = list(rows)
        owners = self._owners([r.id for r in rows])
        result = self.rows.ask("delete", self.recorder.actor, {
            "workflows": [[r.id, r.global_id, owners.get(r.id, "")] for r in rows], "what": what,
            "skipped": [r.global_id for r in skipped], "reasons": [r.reason or "" for r in skipped],
            "require_drained": self.require_drained, "last_event_id": last_event_id, "properties": properties,
            "remove_dirs": True})
        return requests.decode_deleted(result).deletion

    def _owners(self, workflow_ids: list[int]) -> dict[int, str]:
        from sqlalchemy import select

        from broker.persistence.models import User, Workflow

        if not workflow_ids:
            return {}
        with self.sessions() as s:
            return dict(s.execute(select(Workflow.id, User.name).join(User, Workflow.owner_id == User.id)
                                  .where(Workflow.id.in_(workflow_ids))).all())
