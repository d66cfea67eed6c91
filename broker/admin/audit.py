"""Recording admin actions as ADMIN_ACTION events, the way the engine writes events.

While a broker runs it owns the events table: its writer commits every event, so event ids increase in
commit order (the API's ``lastId`` paging relies on it). Two recorders follow that rule:

* :class:`EngineRecorder` (the API, inside ``broker serve``) goes through the running broker's engine;
* :class:`DirectRecorder` (the CLI, holding the broker lock, so no broker runs) adds the event in its own
  transaction, which may be the deletion's own: then the record and the deletion commit together.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from broker.events.types import EventType

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where admin actions are recorded; ``actor`` is ``admin:<name>`` (or ``user:<name>``)."""

    actor: str
    #: whether :meth:`record` can join the caller's transaction (then the record commits with the change)
    joins_transactions: bool

    def record(self, workflow_id: int | None, message: str, properties: dict[str, Any],
               session: Session | None = None) -> None:
        """Record one ADMIN_ACTION event (``workflow_id`` None: service-level)."""


class EngineRecorder:
    """Records through the engine this process runs (``broker serve``): its writer commits the event."""

    joins_transactions = False

    def __init__(self, engine: Any, actor: str):
        self.engine = engine
        self.actor = actor

    def record(self, workflow_id: int | None, message: str, properties: dict[str, Any],
               session: Session | None = None) -> None:
        """Hand the event to the engine; its writer commits it with its next batch."""
        log.info("%s by %s", message, self.actor)
        self.engine.note(workflow_id, EventType.ADMIN_ACTION.value, self.actor, message, properties)


class DirectRecorder:
    """Writes the events itself: for a process that holds the broker lock (the CLI with no broker running)."""

    joins_transactions = True

    def __init__(self, sessions: sessionmaker[Session], actor: str, *, publishing: bool = True):
        """``publishing``: whether a bus is configured (without one, the events get no outbox rows)."""
        self.sessions = sessions
        self.actor = actor
        self.publishing = publishing

    def record(self, workflow_id: int | None, message: str, properties: dict[str, Any],
               session: Session | None = None) -> None:
        """Add the event in ``session`` (committed with the caller's change), else in a transaction of its own."""
        log.info("%s by %s", message, self.actor)
        if session is not None:
            self._add(session, workflow_id, message, properties)
            return
        with self.sessions.begin() as s:
            self._add(s, workflow_id, message, properties)

    def _add(self, s: Session, workflow_id: int | None, message: str, properties: dict[str, Any]) -> None:
        from broker.persistence import repository
        from broker.persistence.models import Workflow

        workflow = None if workflow_id is None else s.get(Workflow, workflow_id)
        if workflow_id is not None and workflow is None:
            return  # deleted meanwhile: nothing left to attach the event to
        repository.add_event(s, workflow, type=EventType.ADMIN_ACTION, actor=self.actor, message=message,
                             properties=properties, publishing=self.publishing)
