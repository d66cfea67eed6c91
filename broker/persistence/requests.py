"""Requests: changes any process asks the database's active writer to make, through the ``requests`` table.

One writer stays the rule: only the broker holding the database (its ``flock`` on SQLite, its lease on
PostgreSQL) changes workflow state. Any other process (a second ``broker run``, ``broker admin delete``
while a broker runs, later an API process without an engine) inserts a row and waits for it.

The interface, for every process that routes a change through it:

* :func:`insert` (``kind``, ``requested_by`` = ``user:<name>`` or ``admin:<name>``, ``account`` = the
  asking process's operating-system account or None for an authenticated API client, ``payload`` = the
  kind's arguments as a JSON object, ``workflow_gid``) in the caller's own transaction; returns the id. A
  submit reserves the new workflow's global id here (:func:`reserve_global_id`), so the caller can print
  it before the writer has stored the workflow.
* :func:`wait` polls the row until the writer has decided (``applied`` with :attr:`Row.result`, or
  ``failed`` with :attr:`Row.error` and :attr:`Row.reason`); :func:`withdraw` takes a pending row back
  (atomic: it fails once the writer has claimed it), so a caller that gives up leaves nothing behind.
* The active writer (:mod:`broker.applier`) reads :func:`pending` rows a few times a second, builds the
  change, and commits :class:`ApplyRequest`: in **one transaction** it claims the row (``pending`` ->
  ``applied``, only if still pending), applies the change, and records the answer or why it failed. So a
  crash between the insert and the apply loses nothing (the row stays pending for the next writer) and
  applies nothing twice (a claimed row is never claimed again); on PostgreSQL that transaction is fenced
  by the lease like every commit.

Kinds and payloads (answers in :attr:`Row.result`):

=========  ==============================================================  ================================
submit     ``descriptor`` (text), ``filename``, ``owner``; ``options``:     ``workflow_id``, ``global_id``
           label, request_id, experiment_id, event_level, priority,
           publish_metadata_to; ``workflow_gid`` = the reserved global id
resume     ``workflow_id``                                                  ``workflow_id``, ``global_id``
cancel     ``workflow_id``, ``node_ids`` (None: the whole workflow)         ``workflow_id``, ``global_id``
restart    ``workflow_id``, ``node_ids`` (None: the whole workflow)         ``workflow_id``, ``global_id``
delete     the fields of :class:`~broker.persistence.changes.DeleteWorkflows`  ``deleted``, ``skipped``,
                                                                            ``reasons``, ``workflow_ids``
archive    ``workflow_id`` (None: service-level), ``message``,             ``{}``
           ``properties``: the ADMIN_ACTION event an archive records
push       ``node_id``, ``attempt``, ``progress`` ([percent, message] or   ``ignored``: why it changed
           None), ``outputs`` ([[name, value]]), ``result`` ([outcome,     nothing (None: applied)
           exit code, message] or None): an elf's report
=========  ==============================================================  ================================

A submit or resume that carries an ``account`` is applied only by a writer that runs local payloads as that
account (see :mod:`broker.applier`); otherwise it fails with reason ``account``. A delete whose payload says
``remove_dirs`` (an API process on another machine, :mod:`broker.api.rows`) has its work directories
removed on the writer's machine, journalled as :mod:`broker.admin.delete` does. A failed request records the
kind of its error (:attr:`Row.error_type`: ``NotFound``, ``StateError``...), so that an API process answers
with the fault a direct call gives.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from broker.errors import BrokerError, DescriptionError, LimitExceeded, StateError
from broker.persistence.changes import Accepted, Deleted, Rejected
from broker.persistence.requestrows import Request, WriterInfo

KINDS = ("submit", "resume", "cancel", "restart", "delete", "archive", "push")
PENDING, APPLIED, FAILED, WITHDRAWN = "pending", "applied", "failed", "withdrawn"
#: why a request failed, for the caller's exit code: the content was refused; the writer does not run
#: payloads as the asker's account; anything else
INVALID, ACCOUNT, ERROR = "invalid", "account", "error"
#: most bytes of a payload (a submit carries its description, itself bounded by [limits] max_document_bytes)
MAX_PAYLOAD = 64 * 1024 * 1024
#: seconds between two reads of a request while waiting for the writer (it reads new ones a few times a second)
POLL = 0.05
#: characters of a failed request's error kept
MAX_ERROR = 4000


@dataclass(frozen=True, slots=True)
class Row:
    """A request as read back."""

    id: int
    kind: str
    requested_by: str
    account: str | None
    payload: dict[str, Any]
    workflow_gid: str | None
    state: str
    result: dict[str, Any] | None
    error: str | None
    applied_by: str | None

    @property
    def reason(self) -> str:
        """Why a failed request failed: INVALID, ACCOUNT or ERROR."""
        return str((self.result or {}).get("reason", ERROR))

    @property
    def error_type(self) -> str:
        """The class name of the error that made a failed request fail (``BrokerError`` when not recorded)."""
        return str((self.result or {}).get("error_type", "BrokerError"))


# ------------------------------------------------------------------------------------- asking processes

def reserve_global_id() -> str:
    """A new workflow global id, for a submit request (the writer stores the workflow under it)."""
    from broker.ids import new_workflow_global_id

    return new_workflow_global_id()


def insert(s: Session, kind: str, requested_by: str, payload: dict[str, Any], *, account: str | None = None,
           workflow_gid: str | None = None) -> int:
    """Queue a request for the active writer; returns its id (committed with the caller's transaction)."""
    if kind not in KINDS:
        raise ValueError(f"unknown request kind {kind!r}")
    text = json.dumps(payload, separators=(",", ":"))
    if len(text) > MAX_PAYLOAD:
        raise LimitExceeded(f"request of {len(text)} bytes; at most {MAX_PAYLOAD} are accepted")
    row = Request(kind=kind, requested_by=requested_by[:64], account=None if account is None else account[:64],
                  payload=text, workflow_gid=workflow_gid, state=PENDING)
    s.add(row)
    s.flush()
    return row.id


def get(s: Session, request_id: int) -> Row | None:
    row = s.get(Request, request_id, populate_existing=True)
    return None if row is None else _row(row)


def withdraw(s: Session, request_id: int) -> bool:
    """Take a pending request back; False when the writer has claimed it already (then it stands)."""
    return s.execute(update(Request).where(Request.id == request_id, Request.state == PENDING)
                     .values(state=WITHDRAWN)).rowcount == 1


def wait(sessions: Any, request_id: int, timeout: float, *, give_up: Any = None) -> Row | None:
    """The request once the writer has decided (applied or failed); None when ``timeout`` passed first, or when
    ``give_up()`` said so (then the request was withdrawn; if the writer claimed it meanwhile, its row)."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as s:
            row = get(s, request_id)
        if row is None or row.state != PENDING:
            return row
        if time.monotonic() >= deadline or (give_up is not None and give_up()):
            with sessions.begin() as s:
                if withdraw(s, request_id):
                    return None
            continue  # claimed meanwhile: its answer is on its way
        time.sleep(POLL)  # a poll interval: the writer reads new requests a few times a second


def pending(s: Session, after_id: int, limit: int) -> list[Row]:
    """Requests not applied yet, oldest first, after ``after_id``."""
    return [_row(r) for r in s.scalars(select(Request).where(Request.state == PENDING, Request.id > after_id)
                                        .order_by(Request.id).limit(limit))]


def _row(r: Request) -> Row:
    try:
        payload = json.loads(r.payload)
    except ValueError:
        payload = {}
    result = None
    if r.result:
        try:
            result = json.loads(r.result)
        except ValueError:
            result = None
    return Row(r.id, r.kind, r.requested_by, r.account, payload if isinstance(payload, dict) else {},
               r.workflow_gid, r.state, result if isinstance(result, dict) else None, r.error, r.applied_by)


# --------------------------------------------------------------------------------------- the writer's row

def announce(s: Session, holder: str, pid: int, account: str, runs_as: str) -> None:
    """Say who the active writer is (called by it, holding the lock or lease, in its own transaction)."""
    s.execute(delete(WriterInfo))
    s.add(WriterInfo(id=1, holder=holder, pid=pid, account=account, runs_as=runs_as))


def retire(s: Session, holder: str) -> None:
    """Remove the writer's row as it stops (only its own: a successor may have written its own already)."""
    s.execute(delete(WriterInfo).where(WriterInfo.holder == holder))


def writer_info(s: Session) -> WriterInfo | None:
    return s.get(WriterInfo, 1, populate_existing=True)


# -------------------------------------------------------------------------------------------- the writer

@dataclass(frozen=True, slots=True)
class ApplyRequest:
    """A change for the writer: claim request ``request_id``, apply ``change`` (None: only record ``error``,
    a request refused before any change was built), record the answer; all in one transaction."""

    request_id: int
    change: Any
    #: who applies it (the holder line), recorded on the row
    holder: str
    error: str | None = None
    reason: str = ERROR
    #: the class name of the error that refused it (recorded for the asking process)
    error_type: str = "BrokerError"
    #: with neither ``change`` nor ``error``: the answer of a change made elsewhere (a push goes through the
    #: monitoring controller), only recorded here
    result: dict[str, Any] | None = None
    #: told :class:`Applied`, or Rejected when the transaction itself failed (the row then stays pending)
    reply_to: Any = None


@dataclass(frozen=True, slots=True)
class Applied:
    """The writer's reply to ApplyRequest: whether it claimed the row, and the change's answer."""

    request_id: int
    claimed: bool
    answer: Any = None


def apply_request(store: Any, s: Session, ch: ApplyRequest, batch: Any, out: Any) -> None:
    """The store's handler of ApplyRequest (``store``: the Store, which imports this module)."""
    claimed = s.execute(update(Request).where(Request.id == ch.request_id, Request.state == PENDING)
                        .values(state=APPLIED, applied_at=batch.now, applied_by=ch.holder[:300])).rowcount == 1
    answer: Any = None
    if claimed and ch.change is None and ch.error is None and ch.result is not None:
        s.execute(update(Request).where(Request.id == ch.request_id)
                  .values(result=json.dumps(ch.result, separators=(",", ":"))))
    elif claimed and ch.change is None:
        _failed(s, ch.request_id, ch.error or "refused", ch.reason, ch.error_type)
    elif claimed:
        marker = object()  # finds the change's own answer among the commit's replies
        change = dataclasses.replace(ch.change, reply_to=marker) if hasattr(ch.change, "reply_to") else ch.change
        store._apply(s, change, batch, out)
        mine = [reply for reply in out.replies if reply[0] is marker]
        out.replies[:] = [reply for reply in out.replies if reply[0] is not marker]
        answer = mine[0][1] if mine else None
        if isinstance(answer, Rejected):
            error = answer.error
            reason = INVALID if isinstance(error, (LimitExceeded, DescriptionError, StateError)) else ERROR
            if isinstance(error, BrokerError):  # its own words and kind, as a direct caller gets them
                _failed(s, ch.request_id, str(error), reason, type(error).__name__)
            else:
                _failed(s, ch.request_id, answer.reason, reason)
        else:
            s.execute(update(Request).where(Request.id == ch.request_id)
                      .values(result=json.dumps(encode(answer), separators=(",", ":"))))
    if ch.reply_to is not None:
        out.replies.append((ch.reply_to, Applied(ch.request_id, claimed, answer)))


def _failed(s: Session, request_id: int, error: str, reason: str, error_type: str = "BrokerError") -> None:
    s.execute(update(Request).where(Request.id == request_id).values(
        state=FAILED, error=error[:MAX_ERROR], result=json.dumps({"reason": reason, "error_type": error_type})))


def encode(answer: Any) -> dict[str, Any]:
    """The JSON form of a writer's answer (Accepted, Deleted, None)."""
    if isinstance(answer, Accepted):
        return {"workflow_id": answer.workflow_id, "global_id": answer.global_id, "resumed": answer.resumed}
    if isinstance(answer, Deleted):
        d = answer.deletion
        return {"deleted": list(d.deleted), "skipped": list(d.skipped), "reasons": list(d.reasons),
                "workflow_ids": list(answer.workflow_ids)}
    return {}


def decode_deleted(result: dict[str, Any]) -> Deleted:
    """A delete request's answer back as the Deleted the writer replied."""
    from broker.persistence.queries import Deletion

    return Deleted(Deletion(tuple(result.get("deleted", ())), tuple(result.get("skipped", ())),
                            tuple(result.get("reasons", ()))), tuple(result.get("workflow_ids", ())))


def handed_unfinished(s: Session, account: str) -> list[tuple[int, str]]:
    """(id, global id) of the unfinished workflows handed over by ``account``'s processes (submit, resume
    requests applied), oldest first: what a broker taking the database over for them runs on."""
    from broker.persistence.models import Workflow

    rows = s.execute(select(Workflow.id, Workflow.global_id).join(Request, Request.workflow_gid == Workflow.global_id)
                     .where(Request.kind.in_(("submit", "resume")), Request.state == APPLIED,
                            Request.account == account, Workflow.state.in_(("accepted", "running")))
                     .order_by(Workflow.id)).all()
    return list(dict.fromkeys((r.id, r.global_id) for r in rows))
