"""The relay's doorbell: rings close together are batched into one round; a ring after a quiet spell is not."""

import queue
import time

from broker.events import doorbell as module
from broker.events.doorbell import PUMP, Doorbell

DELAY = 10.0  # far above any scheduling delay of a busy machine: the waits below are the delay's, or none


class Ref:
    def __init__(self):
        self.pumps = queue.Queue()

    def tell(self, message):
        assert message is PUMP
        self.pumps.put(time.monotonic())


def started(monkeypatch, delay):
    skew = [0.0]  # seconds the doorbell's clock is ahead of the real one (a quiet spell, without waiting it out)
    real = time.monotonic
    monkeypatch.setattr(module.time, "monotonic", lambda: real() + skew[0])
    bell = Doorbell(poll_interval=3600.0, batch_delay=delay)
    bell.ref = Ref()
    bell.start()
    return bell, skew


def test_a_ring_soon_after_a_round_waits_out_the_batch_delay(monkeypatch):
    bell, _ = started(monkeypatch, 0.3)
    try:
        first = bell.ref.pumps.get(timeout=30)  # the first round at start
        bell.done(0.0, False)
        bell.ring()
        bell.ring()  # a second commit meanwhile: still one round
        second = bell.ref.pumps.get(timeout=30)
        assert second - first >= 0.3
        bell.done(0.0, False)
        assert bell.ref.pumps.empty()
    finally:
        bell.stop()


def test_a_ring_after_a_quiet_spell_is_a_round_at_once(monkeypatch):
    bell, skew = started(monkeypatch, DELAY)
    try:
        bell.ref.pumps.get(timeout=30)
        bell.done(0.0, False)
        skew[0] = 2 * DELAY  # the batch delay has passed since that round
        rung = time.monotonic()
        bell.ring()
        assert bell.ref.pumps.get(timeout=DELAY / 2) - rung < DELAY / 2
    finally:
        bell.stop()


def test_a_backlog_goes_on_without_the_batch_delay(monkeypatch):
    bell, _ = started(monkeypatch, DELAY)
    try:
        first = bell.ref.pumps.get(timeout=30)
        bell.done(0.0, True)  # rows remain: the next round is due now, not after the delay
        assert bell.ref.pumps.get(timeout=DELAY / 2) - first < DELAY / 2
    finally:
        bell.stop()
