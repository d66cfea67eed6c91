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

The row is all the applier believes: a cancel, restart or delete asked by ``user:<name>`` applies only to that
user's workflows (another user's is "not found", as through the API); an admin's, to anyone's. Two kinds wait
on more than the writer and run on a small pool of their own, so that the requests behind them are not held
up: ``push`` (an elf's report from an API process without an engine) goes to the monitoring controller as the
API's own push does, and the row is claimed once the report is committed (a crash in between applies it again
at the next writer: a report is idempotent, see :mod:`broker.api.push`); a ``delete`` that says
``remove_dirs`` is carried out by a :class:`~broker.admin.delete.Deleter` of this machine, which journals the
work directories, commits the delete with the row's claim, then removes them, here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from sqlalchemy.exc import OperationalError

from broker import runas
from broker.description.model import to_json
from broker.errors import ArgumentError, BrokerError, LimitExceeded, NotFound, ResourceError
from broker.events.types import EventType
from broker.persistence import requests
from broker.persistence.changes import (CancelNodes, CancelWorkflow, DeleteWorkflows, Deleted, Note, Planned,
                                        Rejected, Restart, Submit, Track)
from broker.persistence.models import Workflow

log = logging.getLogger(__name__)

#: most requests read per poll
PAGE = 50
#: seconds a pause waits at most for the requests already sent to be answered
SETTLE = 30.0
#: workflow states of work still going on
UNFINISHED = ("accepted", "running")
#: threads for the requests that wait on more than the writer (pushes, deletes removing directories)
ASIDE_THREADS = 2
#: seconds such a request waits for its commit
ASIDE_TIMEOUT = 60.0


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
        self._aside = ThreadPoolExecutor(ASIDE_THREADS, thread_name_prefix="broker-requests-aside")

    # ---------------------------------------------------------------------------------------- control

    def announce(self) -> None:
        """Write the writer_info row (who holds the database, as whom it runs payloads)."""
        with self.engine.sessions.begin() as s:
            if self.engine.store.guard is not None:
                self.engine.store.guard.check(s)
            requests.announce(s, self.holder, os.getpid(), self.account, self.runs_as)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()
        self._aside.shutdown(wait=True)  # each waits for its commit, bounded by ASIDE_TIMEOUT
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
            except OperationalError as exc:  # unreachable, or cut (a takeover ends a stopped holder's sessions)
                log.warning("could not read requests, trying again in %g s: database unavailable: %s", interval,
                            str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__)
                log.debug("could not read requests", exc_info=True)
            except Exception:  # never let one bad request or another fault stop the thread
                log.exception("could not read or apply requests")

    def _send(self, row: requests.Row) -> None:
        with self._lock:
            self._sent.add(row.id)
        if row.kind == "push" or (row.kind == "delete" and row.payload.get("remove_dirs")):
            self._aside.submit(self._apply_aside, row)
            return
        try:
            change = self._change(row)
            error, reason, kind = None, requests.ERROR, "BrokerError"
        except _Refused as exc:
            change, error, reason, kind = None, str(exc), exc.reason, exc.kind
        except BrokerError as exc:
            change, error, reason, kind = None, str(exc), requests.ERROR, type(exc).__name__
        self._tell(row, requests.ApplyRequest(row.id, change, self.holder, error, reason, kind))

    def _tell(self, row: requests.Row, apply: requests.ApplyRequest, then: Any = None) -> None:
        def answered(answer: Any) -> None:
            self._answered(row, answer)
            if then is not None:
                then(answer)

        self.engine.writer.tell(dataclasses.replace(apply, reply_to=answered))

    def _apply_aside(self, row: requests.Row) -> None:
        """A push or a delete with directories to remove, in a thread of the pool: claimed once done."""
        try:
            if row.kind == "push":
                self._tell(row, requests.ApplyRequest(row.id, None, self.holder, result=self._push(row)))
            else:
                self._delete_here(row)
        except _Recorded:  # the writer refused the change and recorded why on the row
            pass
        except BrokerError as exc:
            reason = exc.reason if isinstance(exc, _Refused) else requests.ERROR
            kind = exc.kind if isinstance(exc, _Refused) else type(exc).__name__
            self._tell(row, requests.ApplyRequest(row.id, None, self.holder, str(exc), reason, kind))
        except Exception:  # left pending for the next broker, as any request this broker could not handle
            log.exception("could not apply request %d (%s)", row.id, row.kind)
            with self._lock:
                self._sent.discard(row.id)
                self._idle.notify_all()

    def _push(self, row: requests.Row) -> dict[str, Any]:
        """Hand an elf's report to the monitoring controller; the answer once it is committed."""
        from broker.controllers.messages import Receipt
        from broker.launchers.base import AttemptResult

        p = row.payload
        node_id, attempt = int(p["node_id"]), int(p["attempt"])
        progress, result = p.get("progress"), p.get("result")
        receipt = Receipt()
        self.engine.pushed(node_id, attempt, receipt=receipt,
                           progress=None if progress is None else (float(progress[0]), progress[1]),
                           outputs=tuple((str(name), value) for name, value in p.get("outputs") or ()),
                           result=None if result is None else AttemptResult(
                               node_id, attempt, str(result[0]), None if result[1] is None else int(result[1]),
                               message=str(result[2] or "")))
        if not receipt.done.wait(ASIDE_TIMEOUT):
            raise BrokerError(f"the status of node {node_id} was not committed within {ASIDE_TIMEOUT:g} s")
        return {"ignored": receipt.rejected}

    def _delete_here(self, row: requests.Row) -> None:
        """A delete asked from another machine: this machine's Deleter journals and removes the directories."""
        from broker.admin.delete import broker_deleter

        p = row.payload
        self._check_owners(row, [int(w[0]) for w in p["workflows"]])
        deleter = broker_deleter(self.engine, row.requested_by, self.settings.database_url(),
                                 require_drained=bool(p.get("require_drained")), writer=_RowWriter(self, row))
        planned = [SimpleNamespace(id=int(w[0]), global_id=str(w[1]), owner=str(w[2]) if len(w) > 2 else "")
                   for w in p["workflows"]]
        skipped = [SimpleNamespace(global_id=str(g), reason=str(r))
                   for g, r in zip(p.get("skipped", ()), p.get("reasons", ()))]
        deleter.delete(planned, str(p["what"]), skipped=skipped, last_event_id=p.get("last_event_id"),
                       properties=p.get("properties"))

    def _apply_and_wait(self, row: requests.Row, change: Any) -> Any:
        """Commit ``change`` with the claim of ``row``; its answer (raises the error that refused it)."""
        done = threading.Event()
        box: list[Any] = []
        self._tell(row, requests.ApplyRequest(row.id, change, self.holder),
                   then=lambda answer: (box.append(answer), done.set()))
        if not done.wait(ASIDE_TIMEOUT):
            raise RuntimeError(f"request {row.id} was not committed within {ASIDE_TIMEOUT:g} s")
        answer = box[0]
        if not isinstance(answer, requests.Applied) or not answer.claimed:  # failed (left pending), or withdrawn
            raise RuntimeError(f"request {row.id} was not applied: {getattr(answer, 'reason', 'withdrawn')}")
        if isinstance(answer.answer, Rejected):  # recorded on the row already
            raise _Recorded(answer.answer.reason)
        return answer.answer

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
            self._check_owners(row, [int(p["workflow_id"])], nodes)
            return (CancelWorkflow(int(p["workflow_id"]), actor) if nodes is None
                    else CancelNodes(tuple(int(n) for n in nodes), actor))
        if row.kind == "restart":
            nodes = p.get("node_ids")
            self._check_owners(row, [int(p["workflow_id"])], nodes)
            return Restart(int(p["workflow_id"]), actor, None if nodes is None else tuple(int(n) for n in nodes))
        if row.kind == "delete":
            self._check_owners(row, [int(w[0]) for w in p["workflows"]])
            return DeleteWorkflows(
                tuple(Planned(int(w[0]), str(w[1])) for w in p["workflows"]), actor, str(p["what"]),
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
        return Submit(spec=spec, descriptor=descriptor, owner=owner, global_id=row.workflow_gid, plan=to_json(spec),
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

    def _check_owners(self, row: requests.Row, workflow_ids: list[int], node_ids: Any = None) -> None:
        """A user's request acts on that user's own workflows only (the nodes named, of those workflows): any
        other is "not found", in the words of the API (an admin's request acts on anyone's)."""
        from sqlalchemy import select

        from broker.persistence.models import Node, User

        role, _, name = row.requested_by.partition(":")
        if role != "user":
            return
        with self.engine.sessions() as s:
            owners = dict(s.execute(select(Workflow.id, User.name).join(User, Workflow.owner_id == User.id)
                                    .where(Workflow.id.in_(workflow_ids))).all())
            outside = s.scalar(select(Node.id).where(Node.id.in_([int(n) for n in node_ids]),
                                                     Node.workflow_id.not_in(workflow_ids)).limit(1)) \
                if node_ids else None
        for workflow_id in workflow_ids:
            if owners.get(workflow_id) != name:
                raise NotFound(f"no workflow {workflow_id}")
        if outside is not None:
            raise NotFound(f"no node {outside}")

    def _check_account(self, row: requests.Row, owner: str) -> None:
        """Refuse (reason ``account``) unless this broker runs ``owner``'s local payloads as the row's account."""
        account = row.account
        if account is None:  # an authenticated API client: the mapping decides, as for the API's own submit
            if getattr(self.engine, "service", None) != "serve":  # a broker run's payloads run as its account
                raise _Refused(f"{self.holder} runs only its own account's workflows: API requests need an "
                               "active broker serve", requests.ACCOUNT, "StateError")
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
    """A request this broker will not apply, and why (``reason``: requests.INVALID or ACCOUNT; ``kind``: the
    error class the asker raises)."""

    def __init__(self, message: str, reason: str, kind: str = "BrokerError"):
        super().__init__(message)
        self.reason = reason
        self.kind = kind


class _Recorded(Exception):
    """A request the writer refused and recorded as failed: nothing more to do."""


class _RowWriter:
    """The writer of a Deleter applying one delete request: the delete commits with the request's claim."""

    def __init__(self, applier: Applier, row: requests.Row):
        self.applier, self.row = applier, row

    def delete_workflows(self, change: DeleteWorkflows) -> Deleted:
        return self.applier._apply_and_wait(self.row, change)
