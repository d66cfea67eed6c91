"""The relay's doorbell: turns commits, the poll interval and backoff deadlines into rounds of the relay.

The writer rings it after each commit (cheap: a flag and a notify); its thread tells the relay actor to do
a round when one is due and none is pending, so a burst of commits costs one round, not one each, and a
relay backing off from a dead bus is not woken by every commit. A ring within ``batch_delay`` of the last
round waits for the rest of it: when the writer commits every few milliseconds (a busy run), each round's
fixed cost (a read of the outbox, a bus transaction, the mark and its commit) is paid for several commits'
events instead of one's; an event after a quiet spell goes out at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka


class Pump:
    """Do one round now."""


PUMP = Pump()


class Doorbell(threading.Thread):
    """Tells the actor ``ref`` to do a round (:data:`PUMP`) when one is due; at most one is pending."""

    def __init__(self, poll_interval: float, batch_delay: float = 0.0):
        super().__init__(name="broker-relay-doorbell")
        self.poll_interval = max(poll_interval, 0.01)
        self.batch_delay = max(batch_delay, 0.0)
        self._last_round = -float("inf")
        self._more = False  # the last round left rows: the next is due at once
        self.ref: pykka.ActorRef[Any] | None = None
        self._cond = threading.Condition()
        self._rung = True  # a first round at start: rows may be waiting from before
        self._pending = False
        self._not_before = 0.0
        self._stopping = False

    def ring(self) -> None:
        """Something was committed: do a round soon."""
        with self._cond:
            self._rung = True
            self._cond.notify()

    def done(self, not_before: float, more: bool) -> None:
        """The actor finished a round; ``more``: rows remain; ``not_before`` (0: none): no round before
        then, and one at that time (the relay's next try or probe of the bus), rung or not."""
        with self._cond:
            self._pending = False
            self._not_before = not_before
            self._more = more
            self._cond.notify()

    def stop(self) -> None:
        """End the thread and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        next_poll = time.monotonic() + self.poll_interval
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._pending:
                    self._cond.wait()
                    continue
                # a relay backing off asked for its next round (a probe of the bus) at _not_before: due
                # then, not at the next poll, or a returning bus would wait for the poll interval
                if self._not_before:
                    due_at = self._not_before
                elif self._more or now >= next_poll:
                    due_at = now
                elif self._rung:
                    due_at = max(now, self._last_round + self.batch_delay)
                else:
                    due_at = next_poll
                if due_at > now:
                    self._cond.wait(due_at - now)
                    continue
                self._pending, self._rung, self._more = True, False, False
                self._last_round = now
                next_poll = now + self.poll_interval
                try:
                    assert self.ref is not None
                    self.ref.tell(PUMP)
                except pykka.ActorDeadError:
                    return
