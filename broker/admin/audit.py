"""Recording admin actions as ADMIN_ACTION events, and the writer that commits them (and deletions).

The database's writer commits every change, so event ids increase in commit order (the API's ``lastId``
paging relies on it). That writer is the running broker's (``broker serve``: the API goes through its
engine), or, for a command that holds the broker lock so that no broker runs (``broker admin``), a store of
the command's own (:class:`OwnWriter`), which commits each change at once as the broker's writer would.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from broker.errors import BrokerError
from broker.events.types import EventType
from broker.persistence.changes import DeleteWorkflows, Deleted, Note, Rejected

log = logging.getLogger(__name__)


class Writer(Protocol):
    """What the admin code needs of the database's writer (the engine has these methods)."""

    def delete_workflows(self, change: DeleteWorkflows) -> Deleted:
        """Apply the deletion; its answer once committed. Raises the error that refused it."""

    def note(self, workflow_id: int | None, type: str, actor: str, message: str,
             properties: dict[str, Any] | None = None) -> None:
        """Record an event that changes no state."""


class Recorder:
    """Records admin actions through the writer; ``actor`` is ``admin:<name>`` (or ``user:<name>``)."""

    def __init__(self, writer: Writer, actor: str):
        self.writer = writer
        self.actor = actor

    def record(self, workflow_id: int | None, message: str, properties: dict[str, Any]) -> None:
        """Record one ADMIN_ACTION event (``workflow_id`` None: service-level)."""
        log.info("%s by %s", message, self.actor)
        self.writer.note(workflow_id, EventType.ADMIN_ACTION.value, self.actor, message, properties)


class OwnWriter:
    """The writer of a process that owns the database (it holds the broker lock): a store of its own."""

    def __init__(self, sessions: sessionmaker[Session], *, limits: Any, publishing: bool):
        """``publishing``: whether a bus is configured (without one, the events get no outbox rows)."""
        from broker.persistence.store import Store

        self.store = Store(sessions, limits=limits, publishing=publishing)

    def _commit(self, change: Any) -> Any:
        """Commit one change; the answer to it (None for a change that asks none)."""
        reply = object()  # a marker to find the answer among the store's replies (it hands them back)
        out = self.store.commit([dataclasses.replace(change, reply_to=reply) if hasattr(change, "reply_to")
                                 else change])
        answer = next((answer for to, answer in out.replies if to is reply), None)
        if isinstance(answer, Rejected):
            raise answer.error if isinstance(answer.error, BrokerError) else BrokerError(answer.reason)
        return answer

    def delete_workflows(self, change: DeleteWorkflows) -> Deleted:
        return self._commit(change)

    def note(self, workflow_id: int | None, type: str, actor: str, message: str,
             properties: dict[str, Any] | None = None) -> None:
        # a workflow deleted meanwhile has nothing left to attach the event to: the store drops it
        self._commit(Note(workflow_id=workflow_id, type=type, actor=actor, message=message, properties=properties))


class RequestWriter:
    """The writer of a command while a broker holds the database: each change is a request row
    (:mod:`broker.persistence.requests`) that the running broker's writer applies; waits for its answer."""

    def __init__(self, sessions: sessionmaker[Session], *, timeout: float, holder: str = "the running broker"):
        from broker.runas import own_login

        self.sessions = sessions
        self.timeout = timeout
        self.holder = holder
        self.account = own_login()

    def _ask(self, kind: str, actor: str, payload: dict[str, Any]) -> dict[str, Any]:
        from broker.persistence import requests

        with self.sessions.begin() as s:
            request_id = requests.insert(s, kind, actor, payload, account=self.account)
        row = requests.wait(self.sessions, request_id, self.timeout)
        if row is None:
            raise BrokerError(f"{self.holder} did not apply the {kind} within {self.timeout:g} s (request withdrawn)")
        if row.state != requests.APPLIED:
            raise BrokerError(f"{self.holder} could not apply the {kind}: {row.error or row.state}")
        return row.result or {}

    def delete_workflows(self, change: DeleteWorkflows) -> Deleted:
        from broker.persistence import requests

        result = self._ask("delete", change.actor, {
            "workflows": [[w.workflow_id, w.global_id] for w in change.workflows], "what": change.what,
            "skipped": list(change.skipped), "reasons": list(change.reasons),
            "require_drained": change.require_drained, "last_event_id": change.last_event_id,
            "properties": change.properties})
        return requests.decode_deleted(result)

    def note(self, workflow_id: int | None, type: str, actor: str, message: str,
             properties: dict[str, Any] | None = None) -> None:
        if type != EventType.ADMIN_ACTION.value:
            raise BrokerError(f"only ADMIN_ACTION events go through a running broker, not {type}")
        self._ask("archive", actor, {"workflow_id": workflow_id, "message": message, "properties": properties})
