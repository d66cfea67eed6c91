"""Ctrl-C and SIGTERM while a command follows a workflow: handlers that only count, for the main loop to act on."""

from __future__ import annotations

import signal
import threading
from typing import Any


class Interrupts:
    """SIGINT and SIGTERM handlers that only count: the main loop acts on the counts."""

    def __init__(self) -> None:
        self.interrupts = 0
        self.terminated = False
        self._previous: dict[int, Any] = {}

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        self.interrupts += 1

    def _on_terminate(self, signum: int, frame: Any) -> None:
        self.terminated = True

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
