"""What the services work with: the engine, the settings, the clock of the service. No spyne here.

The services read the database themselves; every change goes through a method of the engine (submit, cancel,
restart, pushed, note...), never to its actors or its writer directly."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from broker.api.estimated import EstimateCache
from broker.config import Settings

#: seconds an API call waits for the writer to commit its change
COMMIT_TIMEOUT = 60.0


@dataclass
class ApiContext:
    """The running service: engine (writer, read sessions, plans) and settings."""

    settings: Settings
    engine: Any
    started: float = field(default_factory=time.monotonic)
    #: estimated ends of running workflows and nodes, kept a few seconds (getStatusInfoForId is polled)
    estimates: EstimateCache = field(default_factory=lambda: EstimateCache())
    #: (actor, require_drained) -> the Deleter of deletes through the API; None: one recording through the
    #: engine's writer (broker.api.deletion). An API process without an engine asks the writer's machine.
    make_deleter: Any = None

    @property
    def sessions(self) -> Any:
        """Session factory for reads and for the API's one write of its own (elves' push credentials)."""
        return self.engine.sessions

    @property
    def progress(self) -> Any:
        """The engine's ProgressBoard (committed node counts per workflow)."""
        return self.engine.progress

    def connect(self) -> Any:
        """A plain database connection (SQLAlchemy Core) for hot reads."""
        return self.engine.db.connect()

    def uptime(self) -> float:
        """Seconds since the service started."""
        return time.monotonic() - self.started
