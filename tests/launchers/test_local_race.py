"""A kill racing a payload's own end: one verdict decides, and an attempt that ended first keeps its result.

Each trial releases a payload that then ends at once (exit 0) and kills it a moment later, the moment moved
towards the point where the two meet (a staircase: later after a kill won, earlier after the exit won), so
most trials land within a few hundred microseconds of the payload's end. Whatever the order, the verdict
file (``exit``) and the result must agree: an exit status written first means the payload's own result
(succeeded), a kill verdict written first means cancelled (or timed out).
"""

import time
from pathlib import Path

import pytest

from broker.launchers import base
from broker.launchers.local import LocalLauncher
from tests.launchers.helpers import Exits, busy_wait, make_fifo, release, release_unless, request

#: cancel-at-exit trials, launched this many at a time
TRIALS, BATCH = 300, 20
#: seconds: first delay from a payload's release to its cancel, and the bounds of the staircase
FIRST_DELAY, LEAST_DELAY, MOST_DELAY = 0.0005, 0.00002, 0.05

pytestmark = pytest.mark.usefixtures("local_kind")


def verdict(handle):
    return (Path(handle.workdir) / "exit").read_text()


def launch_batch(launcher, tmp_path, first, count, **fields):
    batch = []
    for n in range(first, first + count):
        fifo = make_fifo(tmp_path / f"go{n}")
        handle = launcher.launch(request(tmp_path / str(n), f"read x < {fifo}\n", node_id=n, **fields))
        exits = Exits()
        launcher.watch(handle, exits)
        batch.append((handle, fifo, exits))
    return batch


def check(launcher, handle, exits, kill_outcome, kill_text):
    """The attempt's result agrees with its verdict; returns which side won."""
    assert exits.next()[:2] == (handle.node_id, handle.attempt)
    result = launcher.collect(handle)
    text = verdict(handle)
    if text == kill_text:
        assert result.outcome == kill_outcome, (handle.workdir, result)
        return "kill"
    # the exit status came first: the payload's own result, never a kill (the old race recorded it cancelled)
    assert (text, result.outcome, result.exit_code) == ("0\n", base.SUCCEEDED, 0), (handle.workdir, result)
    return "exit"


@pytest.mark.slow
def test_a_cancel_racing_the_payloads_exit_never_records_an_attempt_that_ended_first_as_cancelled(tmp_path, capsys):
    delay, won = FIRST_DELAY, {"exit": 0, "kill": 0}
    with LocalLauncher(kill_grace=10.0) as launcher:
        for first in range(0, TRIALS, BATCH):
            for handle, fifo, exits in launch_batch(launcher, tmp_path, first, BATCH):
                release(fifo)
                busy_wait(delay)
                launcher.cancel(handle)
                side = check(launcher, handle, exits, base.CANCELLED, "cancelled\n")
                won[side] += 1
                delay = min(delay * 1.3, MOST_DELAY) if side == "kill" else max(delay / 1.3, LEAST_DELAY)
    with capsys.disabled():
        print(f"\ncancel at exit, {TRIALS} trials: the exit came first {won['exit']} times, the cancel "
              f"{won['kill']} times (last delay {delay * 1e6:.0f} us)")
    assert won["exit"] and won["kill"]  # both sides of the race were exercised


@pytest.mark.slow
def test_a_timeout_racing_the_payloads_exit_never_records_an_attempt_that_ended_first_as_timed_out(tmp_path):
    timeout = 0.25
    # seconds before the deadline each payload is released: well before and well after it at the ends (both
    # outcomes are certain there), within a few milliseconds of it in between
    leads = [0.2, -0.2] + [(i - 6) * 0.001 for i in range(18)]
    won = {"exit": 0, "kill": 0}
    with LocalLauncher(kill_grace=10.0) as launcher:
        for first in range(0, 3 * len(leads), len(leads)):
            batch = launch_batch(launcher, tmp_path, first, len(leads), timeout=timeout)
            # by due time only: two handles may share a start time, and handles do not order
            plan = sorted(((h.started_at + timeout - lead, h, fifo, exits) for (h, fifo, exits), lead
                           in zip(batch, leads)), key=lambda step: step[0])
            for due, handle, fifo, _ in plan:
                busy_wait(due - time.time())
                release_unless(fifo, (Path(handle.workdir) / "exit").exists)
            for _, handle, _, exits in plan:
                won[check(launcher, handle, exits, base.TIMEOUT, "timeout\n")] += 1
    assert won["exit"] and won["kill"]
