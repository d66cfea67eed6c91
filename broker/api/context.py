"""What the services work with: the engine, the settings, the clock of the service. No spyne here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from broker.config import Settings
from broker.errors import BrokerError

#: seconds an API call waits for the writer to commit its change
COMMIT_TIMEOUT = 60.0


@dataclass
class ApiContext:
    """The running service: engine (writer, read sessions, plans) and settings."""

    settings: Settings
    engine: Any
    started: float = field(default_factory=time.monotonic)

    @property
    def sessions(self) -> Any:
        """Session factory for reads and for the API's own writes (users, deletions)."""
        return self.engine.sessions

    @property
    def progress(self) -> Any:
        """The engine's ProgressBoard (committed node counts per workflow), or None."""
        return getattr(self.engine, "progress", None)

    def connect(self) -> Any:
        """A plain database connection (SQLAlchemy Core) for hot reads."""
        return self.engine.db.connect()

    def ask(self, make_change: Callable[[Any], Any], timeout: float = COMMIT_TIMEOUT) -> Any:
        """Send the writer a change built with a reply future; its answer once committed.

        Raises BrokerError with the writer's reason when the change was rejected.
        """
        from broker.persistence.changes import Rejected

        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self.engine.writer.tell(make_change(future))
        answer = future.get(timeout=timeout)
        if isinstance(answer, Rejected):
            raise BrokerError(answer.reason)
        return answer

    def uptime(self) -> float:
        """Seconds since the service started."""
        return time.monotonic() - self.started
