"""What the remote launchers share: the attempts they watch, one poller thread each, results from status files.

A remote launcher never runs a command per attempt to find out how it is doing: one poller thread per
(host, account) reads every watched attempt's status file (and its new ``@broker`` reports) in one agent
command per interval, and a batch launcher adds one scheduler query. Reports are kept per attempt until
the engine has read them (``reports(handle, offset)`` answers from memory), exit callbacks fire from the
poller thread, and a collected result comes from the status the poller already read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from broker.elf import elf
from broker.launchers import base
from broker.launchers.base import AttemptResult, LaunchHandle, Report

log = logging.getLogger(__name__)


class Tracked:
    """One watched attempt (guarded by its Watchlist's lock)."""

    __slots__ = ("handle", "session", "callbacks", "ended", "status", "override", "chunks", "scan_offset",
                 "cancelled", "since", "unknown_since", "job_state", "settle", "extra")

    def __init__(self, handle: LaunchHandle, session: str | None):
        self.handle = handle
        #: the elf session (node global id) the status file must name; None: not checked
        self.session = session
        self.callbacks: list[base.ExitCallback] = []
        self.ended = False
        #: the final status file (a dict) once read
        self.status: dict[str, Any] | None = None
        #: (outcome, message) when the result does not come from the status file alone
        self.override: tuple[str, str] | None = None
        #: reports read but not yet handed to the engine: (start offset, end offset, reports)
        self.chunks: list[tuple[int, int, list[Report]]] = []
        self.scan_offset = 0
        self.cancelled = False
        #: monotonic time it began to be watched
        self.since = time.monotonic()
        #: monotonic time since when nobody (scheduler nor status file) has known of it; None: known
        self.unknown_since: float | None = None
        #: the scheduler's last word on its job (batch launchers)
        self.job_state: str | None = None
        #: polls left to wait for a status file once the scheduler says the job ended
        self.settle = 0
        #: launcher-specific data
        self.extra: Any = None


def key_of(handle: LaunchHandle) -> tuple[int, int]:
    return handle.node_id, handle.attempt


class Watchlist:
    """The attempts a launcher watches, with the callbacks to fire when they end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._items: dict[tuple[int, int], Tracked] = {}

    def add(self, handle: LaunchHandle, session: str | None) -> Tracked:
        """Track ``handle`` (again: the existing entry is kept)."""
        with self.lock:
            tracked = self._items.get(key_of(handle))
            if tracked is None:
                tracked = self._items[key_of(handle)] = Tracked(handle, session)
            return tracked

    def get(self, handle: LaunchHandle) -> Tracked | None:
        with self.lock:
            return self._items.get(key_of(handle))

    def get_key(self, key: tuple[int, int]) -> Tracked | None:
        """The attempt (node id, attempt number), if watched."""
        with self.lock:
            return self._items.get(key)

    def forget(self, handle: LaunchHandle) -> None:
        with self.lock:
            self._items.pop(key_of(handle), None)

    def active(self) -> list[Tracked]:
        """Attempts not yet ended."""
        with self.lock:
            return [t for t in self._items.values() if not t.ended]

    def watch(self, handle: LaunchHandle, session: str | None, on_exit: base.ExitCallback) -> bool:
        """Add ``on_exit`` to the attempt; returns True when it has already ended (call it now)."""
        with self.lock:
            tracked = self._items.get(key_of(handle))
            if tracked is None:
                tracked = self._items[key_of(handle)] = Tracked(handle, session)
            if tracked.ended:
                return True
            if on_exit not in tracked.callbacks:
                tracked.callbacks.append(on_exit)
            return False

    def end(self, tracked: Tracked, status: dict[str, Any] | None, override: tuple[str, str] | None = None
            ) -> list[base.ExitCallback]:
        """Mark ended (lock NOT held by the caller); returns the callbacks to fire."""
        with self.lock:
            if tracked.ended:
                return []
            tracked.ended = True
            tracked.status = status
            tracked.override = override
            callbacks, tracked.callbacks = tracked.callbacks, []
            return callbacks

    @staticmethod
    def add_reports(tracked: Tracked, reply: dict[str, Any]) -> None:
        """Keep the reports a probe found (lock not needed: only the poller advances ``scan_offset``)."""
        if "offset" not in reply or reply["offset"] < tracked.scan_offset:
            return
        reports = [Report(*r) for r in reply.get("reports", ())]
        if reports or reply["offset"] != tracked.scan_offset:
            tracked.chunks.append((tracked.scan_offset, reply["offset"], reports))
        tracked.scan_offset = reply["offset"]

    def reports(self, handle: LaunchHandle, offset: int) -> tuple[list[Report], int] | None:
        """Reports found since ``offset`` (chunks before it are dropped), or None for an unknown attempt."""
        with self.lock:
            tracked = self._items.get(key_of(handle))
            if tracked is None:
                return None
            tracked.chunks = [c for c in tracked.chunks if c[1] > offset]
            found = [r for start, _, reports in tracked.chunks if start >= offset for r in reports]
            end = max([offset] + [c[1] for c in tracked.chunks])
            return found, end


def fire(callbacks: list[base.ExitCallback], handle: LaunchHandle) -> None:
    """Run exit callbacks; one that fails must not stop the poller of every other attempt."""
    for callback in callbacks:
        try:
            callback(handle.node_id, handle.attempt)
        except Exception:
            log.exception("exit callback of node %s attempt %s failed", handle.node_id, handle.attempt)


def status_result(handle: LaunchHandle, status: dict[str, Any] | None, override: tuple[str, str] | None = None
                  ) -> AttemptResult:
    """The AttemptResult of an ended attempt from its final status file and/or an override."""
    status = status or {}
    progress = status.get("progress")
    outputs = status.get("outputs") or {}
    exit_code = status.get("exit_code")
    if override is not None:
        outcome, message = override
    else:
        outcome = status.get("outcome") or base.LOST
        message = status.get("message") or "no result"
        if outcome == base.FAILED and exit_code == 127:
            message += " (command not found: is the interpreter installed?)"
    return AttemptResult(node_id=handle.node_id, attempt=handle.attempt, outcome=outcome, exit_code=exit_code,
                         outputs=dict(outputs) if isinstance(outputs, dict) else {},
                         progress=(float(progress[0]), progress[1]) if progress else None, message=message,
                         spawn=base.spawned(status.get("spawn")) if outcome == base.SUCCEEDED else None)


def cancel_recorded(item: dict[str, Any]) -> bool:
    """Whether the broker's cancel verdict is on disk in the attempt's directory (a probe's ``item``)."""
    return item.get("verdict") == elf.CANCELLED


def killed_by_broker(tracked: Tracked, item: dict[str, Any]) -> bool:
    """Whether the broker's cancel decided the attempt's end: its verdict, or (none yet) the broker's own word.

    A verdict of another side (the payload ended first, a timeout) stands even if the broker asked to cancel.
    """
    return cancel_recorded(item) or (item.get("verdict") is None and tracked.cancelled)


def timeout_message(seconds: float | None) -> str:
    return f"killed after the timeout of {elf.format_seconds(seconds or 0)} s"


class Poller:
    """One thread calling ``poll()`` every ``interval`` seconds while ``busy()``; woken early by :meth:`wake`."""

    def __init__(self, name: str, interval: float, poll: Callable[[], None], busy: Callable[[], bool]):
        self.interval = interval
        self._poll = poll
        self._busy = busy
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._stop = threading.Event()
        #: poll rounds done, and the seconds they took in all (for tests and metrics)
        self.rounds = 0
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name=name)
        self._thread.start()

    def wake(self) -> None:
        """Poll soon (something new to watch)."""
        self._wake.set()

    def hurry(self) -> None:
        """Poll now, also between two rounds (an attempt is known to have ended): not for what is merely new,
        whose poll can wait for the round (a batch host's scheduler is asked once a round)."""
        self._hurry.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._busy():
                self._wake.wait()
                self._wake.clear()
                continue
            started = time.monotonic()
            self._hurry.clear()  # what it was hurried for is looked at now; an end during the round hurries again
            try:
                self._poll()
            except Exception:  # the one poller of a host must outlive any bug or outage
                log.exception("poller %s", self._thread.name)
            took = time.monotonic() - started
            self.rounds += 1
            self.seconds += took
            if not self._stop.is_set():  # a close that came while it cleared the hurry above is seen here
                self._hurry.wait(max(0.0, self.interval - took))

    def close(self) -> None:
        """Stop and join the thread."""
        self._stop.set()
        self._wake.set()
        self._hurry.set()
        self._thread.join()


__all__ = ["Poller", "Tracked", "Watchlist", "fire", "killed_by_broker", "status_result", "timeout_message"]
