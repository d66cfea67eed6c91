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
