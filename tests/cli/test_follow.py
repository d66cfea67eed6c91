"""``broker run``'s follow loop, in process with a fake clock: how often it estimates the workflow's end.

An estimate reads every node of the workflow (seconds at 200,000 nodes) on the thread that shares the
interpreter lock with the engine's; the loop must keep them to a small share of the time.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from broker.cli import progress, run
from broker.estimates import ESTIMATE_SHARE

RUN_SECONDS = 300.0


class FakeRun:
    """A workflow running RUN_SECONDS on a fake clock that the loop's waits and the estimates advance."""

    def __init__(self, estimate_cost: float):
        self.now = 0.0
        self.cost = estimate_cost
        self.estimated_at: list[float] = []
        self.changed = SimpleNamespace(wait=self._wait, clear=lambda: None)

    def monotonic(self) -> float:
        return self.now

    def _wait(self, seconds: float) -> bool:
        self.now += seconds
        return False

    def latest(self, workflow_id):
        state = "running" if self.now < RUN_SECONDS else "succeeded"
        return SimpleNamespace(state=state, counts={state: 1})

    def state_changes(self, workflow_id):
        return []

    def remaining(self, engine, workflow_id):
        self.estimated_at.append(self.now)
        self.now += self.cost
        return None


def follow(monkeypatch, estimate_cost: float) -> FakeRun:
    fake = FakeRun(estimate_cost)
    clock = SimpleNamespace(monotonic=fake.monotonic)
    monkeypatch.setattr(run, "time", clock)
    monkeypatch.setattr(progress, "time", clock)
    monkeypatch.setattr(run, "_remaining", fake.remaining)
    monkeypatch.setattr(progress, "print_summary", lambda *a, **k: "succeeded")
    monkeypatch.setattr("broker.cli.startup_over", lambda: None)
    engine = SimpleNamespace(writer=SimpleNamespace(is_alive=lambda: True), sessions=None)
    assert run.follow(engine, 1, "wf-1", fake, "alice", 0) == 0
    return fake


def test_a_cheap_estimate_is_redone_every_few_seconds(monkeypatch):
    fake = follow(monkeypatch, estimate_cost=0.01)
    gaps = [b - a for a, b in zip(fake.estimated_at, fake.estimated_at[1:])]
    assert gaps and all(progress.ESTIMATE_INTERVAL <= gap <= progress.ESTIMATE_INTERVAL + 1.0 for gap in gaps), gaps
    assert len(fake.estimated_at) >= RUN_SECONDS / (progress.ESTIMATE_INTERVAL + 1.0)


@pytest.mark.parametrize("cost", [2.0, 7.5])
def test_a_costly_estimate_takes_at_most_a_small_share_of_the_time(monkeypatch, cost):
    fake = follow(monkeypatch, estimate_cost=cost)
    gaps = [b - a for a, b in zip(fake.estimated_at, fake.estimated_at[1:])]
    assert gaps and all(gap >= cost + cost / ESTIMATE_SHARE for gap in gaps), gaps
    assert len(fake.estimated_at) * cost <= ESTIMATE_SHARE * fake.now + cost  # the first one is free of a gap
