"""The elf's verdict: a cancel (the host agent's) or a timeout racing the payload's own end, decided once.

Real elf processes; the cancel is the host agent's ``cancel`` command, called in this process as the agent
runs it on a host (claim the verdict, then SIGTERM the elf), with the elf module it loads already loaded
(loading it takes longer than the race lasts). As in tests/launchers/test_local_race.py, the
cancel is aimed by a staircase at the moment the payload ends, and the verdict, the status file and the
agent's answer must agree: a payload that ended first keeps its own result and is never signalled.
"""

import os
import time

import pytest

from broker.elf import ELF_SCRIPT, elf
from broker.elf.elf import read_status, read_verdict
from broker.launchers import hostagent
from tests.elf.helpers import start_elf
from tests.fixtures import wait_for
from tests.launchers.helpers import busy_wait, make_fifo, release, release_unless

#: cancel-at-exit trials (the 300 of the local launcher's test run there), that many elfs started at a time: each is
#: a Python process, slow to start on a busy machine
TRIALS, BATCH = 60, 20


@pytest.fixture(autouse=True)
def loaded_elf(monkeypatch):
    monkeypatch.setattr(hostagent, "_elf", lambda path: elf)


def start_batch(tmp_path, first, count, timeout=None):
    batch = []
    for n in range(first, first + count):
        workdir = tmp_path / str(n)
        fifo = make_fifo(tmp_path / f"go{n}")
        proc = start_elf(workdir, f"read x < {fifo}\n", timeout=timeout)
        batch.append((workdir, fifo, proc))
    return batch


def outcome_agrees_with_verdict(workdir, proc, kill_verdict):
    """The status file follows the verdict; returns which side won."""
    proc.wait(timeout=60)
    status, verdict = read_status(str(workdir)), read_verdict(str(workdir))
    if verdict == kill_verdict:
        assert status["outcome"] == kill_verdict, (workdir, status)
        return "kill"
    # the payload ended first: its own result (the old elf could record it cancelled, exit code 0 and all)
    assert (verdict, status["outcome"], status["exit_code"]) == ("exited", "succeeded", 0), (workdir, status)
    return "exit"


@pytest.mark.slow
def test_a_cancel_racing_the_payloads_end_never_takes_an_attempt_that_ended_first(tmp_path):
    delay, won = 0.0005, {"exit": 0, "kill": 0}
    for first in range(0, TRIALS, BATCH):
        batch = start_batch(tmp_path, first, BATCH)
        replies = []
        for workdir, fifo, proc in batch:
            release(fifo)
            busy_wait(delay)
            replies.append(hostagent.cmd_cancel({"items": [[str(workdir), "cancelled"]], "elf": ELF_SCRIPT}))
            # the answer says at once who won (the elfs write their status files meanwhile)
            ended = replies[-1] == {"items": ["ended"]}
            delay = max(delay / 1.3, 0.00002) if ended else min(delay * 1.3, 0.05)
        for (workdir, _, proc), reply in zip(batch, replies):
            side = outcome_agrees_with_verdict(workdir, proc, "cancelled")
            # an attempt that ended first was never signalled; one whose cancel came first was
            assert (reply == {"items": ["ended"]}) == (side == "exit"), (workdir, reply)
            won[side] += 1
    assert won["exit"] and won["kill"]


@pytest.mark.slow
def test_a_timeout_racing_the_payloads_end_never_takes_an_attempt_that_ended_first(tmp_path):
    timeout = 1.0
    leads = [0.5, -0.5] + [(i - 6) * 0.002 for i in range(18)]
    won = {"exit": 0, "kill": 0}
    batch = start_batch(tmp_path, 0, len(leads), timeout=timeout)
    # the elf's clock starts once it has written its pid file (just before its payload)
    starts = [wait_for(lambda w=w: os.path.exists(w / "pid") and os.stat(w / "pid").st_mtime) for w, _, _ in batch]
    plan = sorted(zip((s + timeout - lead for s, lead in zip(starts, leads)), range(len(batch))))
    for due, i in plan:
        workdir, fifo, _ = batch[i]
        busy_wait(due - time.time())
        release_unless(fifo, lambda w=workdir: read_verdict(str(w)) is not None)
    for workdir, _, proc in batch:
        won[outcome_agrees_with_verdict(workdir, proc, "timeout")] += 1
    assert won["exit"] and won["kill"]


def test_a_cancel_after_the_payload_ended_by_itself_changes_nothing(tmp_path):
    workdir = tmp_path / "w"
    assert start_elf(workdir, "exit 0\n").wait(timeout=30) == 0
    assert hostagent.cmd_cancel({"items": [[str(workdir), "cancelled"]], "elf": ELF_SCRIPT}) == {"items": ["ended"]}
    assert (read_verdict(str(workdir)), read_status(str(workdir))["outcome"]) == ("exited", "succeeded")
