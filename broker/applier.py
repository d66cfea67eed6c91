"""The active writer's side of requests (:mod:`broker.persistence.requests`): read them, build the change, apply.

A thread of the engine reads pending requests every ``[engine] control_interval`` seconds and tells the
writer an :class:`~broker.persistence.requests.ApplyRequest` per request, which claims the row, applies the
change and records the answer in one transaction. Reading and checking (a submit's description is parsed and
checked again here, under this broker's limits) happen in this thread, never in the writer's.

A submit or resume from a process that names its operating-system account is taken only when this broker
runs that owner's local payloads as that very account: a ``broker run`` (every payload as its own account)
takes the same account's; a ``broker serve`` takes an account its mapping gives the owner on every local host
(as root, any mapped account; otherwise only its own). Anything else fails with reason ``account`` and a line
naming this broker, so that nobody's workflow runs with someone else's rights.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from broker import runas
from broker.errors import ArgumentError, BrokerError, LimitExceeded, ResourceError
from broker.events.types import EventType
from broker.persistence import requests
from broker.persistence.changes import (CancelNodes, CancelWorkflow, DeleteWorkflows, Deleted, Note, Planned,
                                        Restart, Submit, Track)
from broker.persistence.models import Workflow

log = logging.getLogger(__name__)

#: most requests read per poll
PAGE = 50
#: seconds a pause waits at most for the requests already sent to be answered
SETTLE = 30.0
#: workflow states of work still going on
UNFINISHED = ("accepted", "running")


class Applier(threading.Thread):
    """Reads requests and tells the writer to apply them; knows which workflows it took over for others."""

    def __init__(self, engine: Any, holder: str):
        super().__init__(name="broker-requests", daemon=True)
        self.engine = engine
        self.settings = engine.settings
        self.holder = holder
        own = runas.own_login()
        self.account = own
        self.runs_as = ("own" if self.settings.engine.run_as_broker_account else
                        "mapped" if runas.is_root() else "mapped-own")
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        #: request ids told to the writer and not answered yet
        self._sent: set[int] = set()
        self._idle = threading.Condition(self._lock)
        self._paused = False
        #: global ids of the workflows this broker runs for other processes (handed over, or taken over)
        self.handed: set[str] = set()

    # ---------------------------------------------------------------------------------------- control

    def announce(self) -> None:
        """Write the writer_info row (who holds the database, as whom it runs payloads)."""
        with self.engine.sessions.begin() as s:
            if self.engine.store.guard is not None:
                self.engine.store.guard(s)
            requests.announce(s, self.holder, os.getpid(), self.account, self.runs_as)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()
        try:
            with self.engine.sessions.begin() as s:
                requests.retire(s, self.holder)
        except Exception as exc:  # the row is only a description: a successor overwrites it
            log.debug("could not remove the writer_info row: %s", exc)

    def pause(self, paused: bool) -> None:
        """Stop (or go on) taking new requests; with ``paused``, wait until every request sent is answered."""
        with self._lock:
            self._paused = paused
            if paused:  # bounded: a commit the lease refused never answers
                self._idle.wait_for(lambda: not self._sent, timeout=SETTLE)

    def unfinished_handed(self) -> list[str]:
        """Global ids of the workflows run for others that have not ended."""
        from sqlalchemy import select

        with self._lock:
            gids = list(self.handed)
        if not gids:
            return []
        with self.engine.sessions() as s:
            return sorted(s.scalars(select(Workflow.global_id).where(Workflow.global_id.in_(gids),
                                                                     Workflow.state.in_(UNFINISHED))))

    # ------------------------------------------------------------------------------------------- loop

    def run(self) -> None:
        interval = self.settings.engine.control_interval
        after = 0
        first = True
        # the first look at once: requests left pending while no broker ran are applied without delay
        while first or not self._stop_event.wait(interval):
            first = False
            try:
                with self._lock:
                    if self._paused:
                        continue
                with self.engine.sessions() as s:
                    rows = requests.pending(s, after, PAGE)
                for row in rows:
                    with self._lock:
                        if row.id in self._sent:
                            continue
                    self._send(row)
                    # a later poll starts after it; a request left pending (an internal error) is read again
                    # by the next broker
                    after = max(after, row.id)
            except Exception:  # never let one bad request or a database fault stop the thread
                log.exception("could not read or apply requests")

    def _send(self, row: requests.Row) -> None:
        try:
            change = self._change(row)
            error, reason = None, requests.ERROR
        except _Refused as exc:
            change, error, reason = None, str(exc), exc.reason
        except BrokerError as exc:
            change, error, reason = None, str(exc), requests.ERROR
        with self._lock:
            self._sent.add(row.id)
        self.engine.writer.tell(requests.ApplyRequest(row.id, change, self.holder, error, reason,
                                                      reply_to=lambda answer: self._answered(row, answer)))

    def _answered(self, row: requests.Row, answer: Any) -> None:
        """In the writer's thread, after the commit: remember what this broker took over; forget deleted plans."""
        if isinstance(answer, requests.Applied):
            if answer.claimed and row.kind in ("submit", "resume") and row.workflow_gid:
                if getattr(answer.answer, "workflow_id", None) is not None:
                    with self._lock:
                        self.handed.add(row.workflow_gid)
            if isinstance(answer.answer, Deleted):
                for workflow_id in answer.answer.workflow_ids:
                    self.engine.forget(workflow_id)
        else:
            log.warning("request %d (%s) could not be applied: %s", row.id, row.kind,
                        getattr(answer, "reason", answer))
        with self._lock:
            self._sent.discard(row.id)
            self._idle.notify_all()

    # ---------------------------------------------------------------------------------------- changes

    def _change(self, row: requests.Row) -> Any:
        p, actor = row.payload, row.requested_by
        if row.kind == "submit":
            return self._submit(row)
        if row.kind == "resume":
            workflow_id = int(p["workflow_id"])
            self._check_account(row, self._owner_of(workflow_id))
            return Track(workflow_id)
        if row.kind == "cancel":
            nodes = p.get("node_ids")
            return (CancelWorkflow(int(p["workflow_id"]), actor) if nodes is None
                    else CancelNodes(tuple(int(n) for n in nodes), actor))
        if row.kind == "restart":
            nodes = p.get("node_ids")
            return Restart(int(p["workflow_id"]), actor, None if nodes is None else tuple(int(n) for n in nodes))
        if row.kind == "delete":
            return DeleteWorkflows(
                tuple(Planned(int(i), str(g)) for i, g in p["workflows"]), actor, str(p["what"]),
                skipped=tuple(p.get("skipped", ())), reasons=tuple(p.get("reasons", ())),
                require_drained=bool(p.get("require_drained")), last_event_id=p.get("last_event_id"),
                properties=p.get("properties"))
        if row.kind == "archive":
            return Note(workflow_id=p.get("workflow_id"), type=EventType.ADMIN_ACTION.value, actor=actor,
                        message=str(p.get("message", "")), properties=p.get("properties"))
        raise BrokerError(f"unknown request kind {row.kind!r}")

    def _submit(self, row: requests.Row) -> Submit:
        from broker.description.arguments import bind
        from broker.description.load import check_description
        from broker.events.routing import metadata_destination_problem

        p = row.payload
        owner = str(p["owner"])
        self._check_account(row, owner)
        descriptor = str(p["descriptor"])
        filename = str(p.get("filename") or "<request>")
        checked = check_description(descriptor.encode("utf-8"), self.settings, filename=filename)
        if checked.spec is None:
            raise _Refused("\n".join(str(problem) for problem in checked.problems), requests.INVALID)
        destination = checked.spec.publish_metadata_to
        if destination and (why := metadata_destination_problem(destination,
                                                                self.settings.events.metadata_destinations)):
            raise _Refused(f"{filename}: {why}", requests.INVALID)
        try:  # the arguments come bound already (a file parameter's value is its content)
            spec = bind(checked.spec, dict(p.get("arguments") or {}), self.settings.limits)
        except (ArgumentError, LimitExceeded) as exc:
            raise _Refused(f"broker: {exc}", requests.INVALID) from None
        origin = p.get("origin")
        options = p.get("options") or {}
        return Submit(spec=spec, descriptor=descriptor, owner=owner, global_id=row.workflow_gid,
                      origin=(str(origin[0]), int(origin[1])) if origin else None,
                      **{k: options[k] for k in ("label", "request_id", "experiment_id", "event_level", "priority",
                                                 "publish_metadata_to") if options.get(k) is not None})

    def _owner_of(self, workflow_id: int) -> str:
        from sqlalchemy import select

        from broker.persistence.models import User

        with self.engine.sessions() as s:
            owner = s.scalar(select(User.name).join(Workflow, Workflow.owner_id == User.id)
                             .where(Workflow.id == workflow_id))
        if owner is None:
            raise BrokerError(f"no workflow with id {workflow_id}")
        return owner

    def _check_account(self, row: requests.Row, owner: str) -> None:
        """Refuse (reason ``account``) unless this broker runs ``owner``'s local payloads as the row's account."""
        account = row.account
        if account is None:  # an authenticated API client: the mapping decides, as for the API's own submit
            return
        if self.runs_as == "own":
            if account != self.account:
                raise _Refused(f"{self.holder} runs payloads as account '{self.account}', not as '{account}'",
                               requests.ACCOUNT)
            return
        resources = self.engine.resources
        local = [h.name for h in resources.catalogue.hosts if h.launcher == "local"]
        if not local and account != self.account:
            raise _Refused(f"{self.holder} runs as account '{self.account}', not as '{account}'", requests.ACCOUNT)
        for host in local:
            try:
                login = resources.account(owner, host).login
            except ResourceError as exc:
                raise _Refused(f"{self.holder}: {exc}", requests.ACCOUNT) from None
            if login != account or (self.runs_as == "mapped-own" and login != self.account):
                runs = login if self.runs_as == "mapped" else self.account
                raise _Refused(f"{self.holder} runs user '{owner}''s payloads on host '{host}' as account "
                               f"'{runs}', not as '{account}'", requests.ACCOUNT)


class _Refused(BrokerError):
    """A request this broker will not apply, and why (``reason``: requests.INVALID or ACCOUNT)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason
