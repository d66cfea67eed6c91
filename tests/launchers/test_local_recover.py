"""Recovery: a new launcher finds what became of attempts started by a launcher (or broker) that died."""

import json
import os
import signal
import subprocess
import sys

import pytest

from broker.launchers import base
from broker.launchers.local import LocalLauncher
from broker.launchers.workdir import WRAPPER
from tests.fixtures import wait_for
from tests.launchers.helpers import Exits, alive, children_of, make_fifo, release, request, run_to_end, state_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("local_kind")


@pytest.fixture
def launcher():
    with LocalLauncher(kill_grace=0.5) as it:
        yield it


def launch_and_abandon(tmp_path, text, **fields):
    """Start an attempt with a launcher that is then closed, as a stopped broker leaves it."""
    old = LocalLauncher()
    handle = old.launch(request(tmp_path / "w", text, **fields))
    old.close()
    return handle


def test_a_finished_attempt_is_recovered_with_its_result(launcher, tmp_path):
    with LocalLauncher() as old:
        handle = old.launch(request(tmp_path / "w", "echo '@broker output n=5'\nexit 2\n"))
        run_to_end(old, handle)
    found = launcher.recover(1, 1, str(tmp_path / "w"), handle.job_id)
    assert found.status == "finished"
    assert (found.result.outcome, found.result.exit_code, found.result.outputs) == (base.FAILED, 2, {"n": 5})


def test_a_running_attempt_is_adopted_and_watched_to_its_end(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    handle = launch_and_abandon(tmp_path, f"read x < {fifo}\necho '@broker output done=true'\n")
    # its wrapper has written its pid (before that, on a loaded machine, it is adopted as pid 0 until the pid
    # appears: the stopped-wrapper tests below cover that)
    wait_for(lambda: (tmp_path / "w" / "pid").exists(), what="the wrapper's pid file")
    found = launcher.recover(1, 1, str(tmp_path / "w"), handle.job_id)
    assert found.status == "running" and found.handle.job_id == handle.job_id
    assert found.handle.started_at == pytest.approx(handle.started_at)
    exits = Exits()
    launcher.watch(found.handle, exits)
    release(fifo)
    exits.next()
    result = launcher.collect(found.handle)
    assert (result.outcome, result.outputs) == (base.SUCCEEDED, {"done": True})


@pytest.mark.slow
def test_the_timeout_of_an_adopted_attempt_counts_from_its_start(launcher, tmp_path):
    handle = launch_and_abandon(tmp_path, "sleep 100\n", timeout=1.0)
    found = launcher.recover(1, 1, str(tmp_path / "w"), handle.job_id)
    assert found.status == "running"
    result = run_to_end(launcher, found.handle)
    assert (result.outcome, result.message) == (base.TIMEOUT, "killed after the timeout of 1 s")


@pytest.mark.wrapper_only
def test_a_wrapper_without_a_pid_file_is_found_in_proc(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    handle = launch_and_abandon(tmp_path, f"read x < {fifo}\nexit 6\n")
    wait_for(lambda: (tmp_path / "w" / "pid").exists())
    os.unlink(tmp_path / "w" / "pid")  # as if the broker died before the wrapper wrote it
    found = launcher.recover(1, 1, str(tmp_path / "w"), None)
    assert found.status == "running" and found.handle.job_id == handle.job_id
    release(fifo)
    assert run_to_end(launcher, found.handle).exit_code == 6


def started_workdir(tmp_path, pid, lock=True):
    """A work directory as a launch leaves it once the wrapper wrote ``pid``, its wrapper since gone."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    record = {"node_id": 1, "attempt": 1, "started_at": 0.0, "timeout": None}
    (workdir / "launch.json").write_text(json.dumps(dict(record, lock=1) if lock else record))
    (workdir / "pid").write_text(f"{pid}\n")
    return workdir


def test_an_attempt_whose_process_is_gone_without_a_status_is_lost(launcher, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    workdir = started_workdir(tmp_path, gone.pid)
    found = launcher.recover(1, 1, str(workdir), str(gone.pid))
    assert found.status == "lost"
    assert (found.result.outcome, found.result.message) == (base.LOST, "no exit status: the process disappeared")


@pytest.mark.parametrize("lock", [True, False], ids=["locked", "legacy"])
def test_a_reused_pid_is_not_taken_for_the_attempt(launcher, tmp_path, lock):
    # alive, but not this attempt's wrapper (and, for a record from before the lock, no wrapper in /proc)
    workdir = started_workdir(tmp_path, os.getpid(), lock)
    assert launcher.recover(1, 1, str(workdir), str(os.getpid())).status == "lost"


def test_a_running_attempt_started_before_the_launch_lock_is_adopted_by_its_pid(launcher, tmp_path):
    # as a broker from before the lock left it: a record without "lock", a wrapper that holds nothing
    fifo = make_fifo(tmp_path / "go")
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "launch.json").write_text(json.dumps({"node_id": 1, "attempt": 1, "started_at": 0.0}))
    (workdir / "payload").write_text(f"read x < {fifo}\nexit 5\n")
    wrapper = subprocess.Popen(["/bin/sh", WRAPPER, str(workdir), "sh", str(workdir / "payload")],
                               stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (workdir / "pid").exists())
    found = launcher.recover(1, 1, str(workdir), None)
    assert (found.status, found.handle.job_id) == ("running", str(wrapper.pid))
    release(fifo)
    assert run_to_end(launcher, found.handle).exit_code == 5
    wrapper.wait()


@pytest.mark.slow
def test_an_attempt_killed_before_the_broker_died_is_recovered_as_killed(launcher, tmp_path, local_kind):
    with LocalLauncher() as old:
        handle = old.launch(request(tmp_path / "w", "trap '' TERM\nsleep 100\n", timeout=0.2))
        run_to_end(old, handle)  # the wrapper was SIGKILLed: no exit status, only the kill verdict
    assert (tmp_path / "w" / "exit").read_text() == "timeout\n"
    if local_kind == "wrapper":
        assert not (tmp_path / "w" / "killed_exit").exists()
    else:  # the agent, outside the payload's group, records its status beside the verdict
        assert (tmp_path / "w" / "killed_exit").read_text() == "137\n"
    found = launcher.recover(1, 1, str(tmp_path / "w"), handle.job_id)
    assert (found.status, found.result.outcome) == ("finished", base.TIMEOUT)


def test_cancel_reaches_an_attempt_known_only_by_its_handle(launcher, tmp_path):
    handle = launch_and_abandon(tmp_path, "sleep 100\n")
    launcher.cancel(handle)
    exits = Exits()
    launcher.watch(handle, exits)
    exits.next()
    assert not alive(int(handle.job_id))
    assert launcher.collect(handle).outcome == base.CANCELLED


def start_dying_broker(tmp_path, text, timeout=None):
    args = [sys.executable, "-m", "tests.launchers.broker_that_dies", str(tmp_path / "w"), text]
    if timeout is not None:
        args.append(str(timeout))
    broker = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    handle = json.loads(broker.stdout.readline())
    broker.send_signal(signal.SIGKILL)
    broker.wait()
    return int(handle["job_id"])


def test_the_payload_outlives_a_killed_broker_and_its_result_is_recovered(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    pid = start_dying_broker(tmp_path, f"read x < {fifo}\necho '@broker output survived=true'\nexit 3\n")
    assert alive(pid)
    found = launcher.recover(7, 2, str(tmp_path / "w"), str(pid))
    assert found.status == "running"
    exits = Exits()
    launcher.watch(found.handle, exits)
    release(fifo)
    assert exits.next()[:2] == (7, 2)
    result = launcher.collect(found.handle)
    assert (result.outcome, result.exit_code, result.outputs) == (base.FAILED, 3, {"survived": True})


def test_a_payload_that_ended_while_no_broker_ran_is_recovered_as_finished(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    pid = start_dying_broker(tmp_path, f"read x < {fifo}\necho '@broker progress 100'\n")
    release(fifo)
    wait_for(lambda: (tmp_path / "w" / "exit").exists())
    found = launcher.recover(7, 2, str(tmp_path / "w"), str(pid))
    assert found.status == "finished"
    assert (found.result.outcome, found.result.progress) == (base.SUCCEEDED, (100.0, None))


# ---------------------------------------------------- started or not: the launch lock, whatever the timing


def test_a_wrapper_stopped_before_its_first_instruction_is_running_never_absent(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    text = f"echo ran >> {tmp_path}/ran\nread x < {fifo}\necho '@broker output done=true'\n"
    with LocalLauncher() as old:
        pid = int(old.launch(request(tmp_path / "w", text)).job_id)
        os.kill(pid, signal.SIGSTOP)  # at once: the shell has had no time to write its pid
    try:
        wait_for(lambda: state_of(pid) == "T")
        # the broker's record of the pid is not needed either: the launch record's lock answers
        found = launcher.recover(1, 1, str(tmp_path / "w"), None)
        assert found.status == "running"
        assert launcher.recover(1, 1, str(tmp_path / "w"), None).status == "running"
        exits = Exits()
        launcher.watch(found.handle, exits)
    finally:
        os.kill(pid, signal.SIGCONT)
    release(fifo)
    exits.next()
    result = launcher.collect(found.handle)
    assert (result.outcome, result.outputs) == (base.SUCCEEDED, {"done": True})
    assert (tmp_path / "ran").read_text() == "ran\n"


def stopped_before_exec(tmp_path, text):
    """A broker that died between forking the wrapper and the child's exec: returns the stopped child's pid."""
    broker = subprocess.Popen([sys.executable, "-m", "tests.launchers.broker_that_dies", str(tmp_path / "w"), text,
                               "--stop-before-exec"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child = wait_for(lambda: children_of(broker.pid, "T"))[0]
    finally:
        broker.kill()
        broker.wait()
    assert not (tmp_path / "w" / "pid").exists()  # nothing of the wrapper has run
    return child


@pytest.mark.wrapper_only
def test_an_attempt_whose_broker_died_between_fork_and_exec_is_running_and_watched_to_its_end(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    child = stopped_before_exec(tmp_path, f"echo ran >> {tmp_path}/ran\nread x < {fifo}\nexit 4\n")
    try:
        found = launcher.recover(7, 2, str(tmp_path / "w"), None)
        assert found.status == "running"
        exits = Exits()
        launcher.watch(found.handle, exits)
    finally:
        os.kill(child, signal.SIGCONT)
    release(fifo)  # the wrapper runs once continued, and the launcher finds it by its pid file
    assert exits.next()[:2] == (7, 2)
    result = launcher.collect(found.handle)
    assert (result.outcome, result.exit_code) == (base.FAILED, 4)
    assert (tmp_path / "ran").read_text() == "ran\n"


@pytest.mark.wrapper_only
def test_a_cancel_of_an_attempt_whose_wrapper_never_ran_keeps_its_payload_from_running(launcher, tmp_path):
    child = stopped_before_exec(tmp_path, f"echo ran >> {tmp_path}/ran\n")
    try:
        found = launcher.recover(7, 2, str(tmp_path / "w"), None)
        assert found.status == "running"
        launcher.cancel(found.handle)  # recorded; there is no process group to signal yet
        exits = Exits()
        launcher.watch(found.handle, exits)
    finally:
        os.kill(child, signal.SIGCONT)
    exits.next()
    assert launcher.collect(found.handle).outcome == base.CANCELLED
    assert not (tmp_path / "ran").exists()
