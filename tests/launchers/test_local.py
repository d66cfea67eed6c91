"""The local launcher with real processes: results, reports, timeouts, cancel, latency, many launches."""

import os
import signal
import statistics
import threading
import time

import pytest

from broker.errors import StateError
from broker.launchers import base
from broker.launchers.local import LocalLauncher
from tests.fixtures import wait_for
from tests.launchers.helpers import Exits, alive, make_fifo, release, request, run_to_end, zombie_children

pytestmark = pytest.mark.usefixtures("local_kind")


@pytest.fixture
def launcher():
    with LocalLauncher(kill_grace=0.5) as it:
        yield it


def test_a_successful_payload_reports_outputs_progress_and_keeps_its_output_files(launcher, tmp_path):
    workdir = tmp_path / "wf" / "n1" / "1"
    text = ("echo hello\necho oops >&2\necho '@broker progress 40 \"reading\"'\n"
            "echo '@broker output rows=12'\necho '@broker output best={\"x\": [1.5, \"é\"]}'\n")
    handle = launcher.launch(request(workdir, text))
    result = run_to_end(launcher, handle)
    assert result == base.AttemptResult(node_id=1, attempt=1, outcome=base.SUCCEEDED, exit_code=0,
                                        outputs={"rows": 12, "best": {"x": [1.5, "é"]}},
                                        progress=(40.0, "reading"), message="exit code 0")
    assert (workdir / "stdout").read_text().startswith("hello\n")
    assert (workdir / "stderr").read_text() == "oops\n"
    assert (workdir / "payload").read_text() == text
    assert os.stat(workdir).st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "wf").st_mode & 0o777 == 0o700
    assert handle.job_id == (workdir / "pid").read_text().strip()


def test_a_failing_payload_gives_its_exit_code(launcher, tmp_path):
    result = run_to_end(launcher, launcher.launch(request(tmp_path / "w", "exit 3\n")))
    assert (result.outcome, result.exit_code, result.message) == (base.FAILED, 3, "exit code 3")


def test_a_missing_interpreter_fails_with_a_clear_message(launcher, tmp_path):
    result = run_to_end(launcher, launcher.launch(request(tmp_path / "w", "x", interpreter="no-such-interp")))
    assert (result.outcome, result.exit_code) == (base.FAILED, 127)
    assert "interpreter" in result.message


def test_payloads_run_with_the_interpreter_of_their_type(launcher, tmp_path):
    text = "import sys\nprint('@broker output major=%d' % sys.version_info[0])\n"
    py = launcher.launch(request(tmp_path / "py", text, kind="python"))
    bash = launcher.launch(request(tmp_path / "bash", "echo \"@broker output v=${BASH_VERSINFO[0]}\"\n",
                                   kind="bash", node_id=2))
    assert run_to_end(launcher, py).outputs == {"major": 3}
    assert run_to_end(launcher, bash).outputs["v"] >= 4


def test_the_environment_drops_broker_settings_and_request_variables_win(monkeypatch, tmp_path):
    monkeypatch.setenv("BROKER_DATABASE_URL", "secret")
    monkeypatch.setenv("WB_PARAM_stale", "from the broker's own environment")
    monkeypatch.setenv("SHARED", "broker")
    text = ('echo "@broker output v=\\"${BROKER_DATABASE_URL-unset}|${WB_PARAM_stale-unset}|'
            '$SHARED|$WB_PARAM_x|$WB_WORKDIR\\""\n')
    with LocalLauncher() as launcher:
        handle = launcher.launch(request(tmp_path / "w", text, env=(("SHARED", "profile"), ("WB_PARAM_x", "1"))))
        result = run_to_end(launcher, handle)
    assert result.outputs == {"v": f"unset|unset|profile|1|{tmp_path / 'w'}"}


def test_a_relative_working_directory_is_created_inside_the_work_directory(launcher, tmp_path):
    handle = launcher.launch(request(tmp_path / "w", "pwd > ../where\n", cwd="run/here"))
    assert run_to_end(launcher, handle).outcome == base.SUCCEEDED
    assert (tmp_path / "w" / "run" / "where").read_text().strip() == str(tmp_path / "w" / "run" / "here")


def test_launching_into_a_started_work_directory_is_refused(launcher, tmp_path):
    handle = launcher.launch(request(tmp_path / "w", "true\n"))
    run_to_end(launcher, handle)
    with pytest.raises(StateError, match="already holds a started attempt"):
        launcher.launch(request(tmp_path / "w", "true\n"))


def test_the_timeout_kills_the_whole_process_group_grandchild_included(launcher, tmp_path):
    workdir = tmp_path / "w"
    handle = launcher.launch(request(workdir, "sleep 100 &\necho $! > gc.pid\nsleep 100\n", timeout=0.5))
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.TIMEOUT, "killed after the timeout of 0.5 s")
    assert result.exit_code == 128 + signal.SIGTERM
    wait_for(lambda: not alive(int((workdir / "gc.pid").read_text())))
    # the verdict, recorded before the first signal; the payload's own status beside it
    assert (workdir / "exit").read_text() == "timeout\n"
    assert (workdir / "killed_exit").read_text() == f"{128 + signal.SIGTERM}\n"


def test_a_payload_ignoring_sigterm_is_killed_after_the_grace(launcher, tmp_path, local_kind):
    workdir = tmp_path / "w"
    handle = launcher.launch(request(workdir, "trap '' TERM\necho $$ > payload.pid\nsleep 100\n", timeout=0.2))
    result = run_to_end(launcher, handle)
    # the SIGKILL ends a wrapper before it records anything; an agent, outside the group, records it
    assert result.outcome == base.TIMEOUT and result.exit_code == (None if local_kind == "wrapper" else 137)
    # SIGKILLed with its wrapper; on a busy machine it may take a moment to be gone
    wait_for(lambda: not alive(int((workdir / "payload.pid").read_text())))


def test_cancel_kills_a_running_attempt_and_is_idempotent(launcher, tmp_path):
    workdir = tmp_path / "w"
    handle = launcher.launch(request(workdir, "sleep 100 &\necho $! > gc.pid\nwait\n"))
    exits = Exits()
    launcher.watch(handle, exits)
    wait_for(lambda: (workdir / "gc.pid").exists())
    launcher.cancel(handle)
    launcher.cancel(handle)
    exits.next()
    launcher.cancel(handle)
    result = launcher.collect(handle)
    assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
    wait_for(lambda: not alive(int((workdir / "gc.pid").read_text())))
    assert exits.queue.empty()


def test_cancelling_an_attempt_that_already_ended_changes_nothing(launcher, tmp_path):
    handle = launcher.launch(request(tmp_path / "w", "true\n"))
    exits = Exits()
    launcher.watch(handle, exits)
    exits.next()
    launcher.cancel(handle)
    assert launcher.collect(handle).outcome == base.SUCCEEDED
    assert (tmp_path / "w" / "exit").read_text() == "0\n"


def test_watch_after_the_end_calls_back_at_once(launcher, tmp_path):
    handle = launcher.launch(request(tmp_path / "w", "true\n"))
    wait_for(lambda: (tmp_path / "w" / "exit").exists())
    exits = Exits()
    launcher.watch(handle, exits)
    assert exits.next(timeout=5)[:2] == (1, 1)


def test_reports_arrive_while_the_payload_runs_and_collect_does_not_repeat_them(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    text = (f"echo '@broker progress 10 \"first\"'\necho '@broker output a=1'\n"
            f"read x < {fifo}\necho '@broker output b=2'\n")
    handle = launcher.launch(request(tmp_path / "w", text))
    seen, offset = [], 0

    def poll():
        nonlocal offset
        reports, offset = launcher.reports(handle, offset)
        seen.extend(reports)
        return len(seen) == 2

    wait_for(poll)
    assert seen == [base.Report("progress", 10.0, "first"), base.Report("output", text="a", value=1)]
    release(fifo)
    result = run_to_end(launcher, handle)
    assert result.outputs == {"a": 1, "b": 2} and result.progress == (10.0, "first")


def test_malformed_report_lines_are_counted_in_the_message(launcher, tmp_path):
    handle = launcher.launch(request(tmp_path / "w", "echo '@broker output x=nope'\necho '@broker progress 500'\n"))
    result = run_to_end(launcher, handle)
    assert result.outcome == base.SUCCEEDED
    assert result.message == "exit code 0; 2 @broker lines ignored (malformed, too long, or past the bounds on outputs)"


def test_collect_refuses_an_attempt_that_is_still_running(launcher, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    handle = launcher.launch(request(tmp_path / "w", f"read x < {fifo}\n"))
    with pytest.raises(StateError, match="still running"):
        launcher.collect(handle)
    release(fifo)
    assert run_to_end(launcher, handle).outcome == base.SUCCEEDED


def test_a_failing_callback_does_not_stop_the_watcher(launcher, tmp_path):
    def broken(node_id, attempt):
        raise RuntimeError("callback bug")

    # held until watched: a payload that ended before watch() would have its callback run by watch() itself
    fifo = make_fifo(tmp_path / "go")
    launcher.watch(launcher.launch(request(tmp_path / "a", f"read x < {fifo}\n")), broken)
    release(fifo)
    assert run_to_end(launcher, launcher.launch(request(tmp_path / "b", "true\n", node_id=2))).outcome == base.SUCCEEDED


def test_two_hundred_launches_four_at_a_time_are_all_collected_and_reaped(launcher, tmp_path):
    exits = Exits()
    handles, results, running = {}, [], 0
    for node_id in range(200):
        if running == 4:
            done_id, _, _ = exits.next()
            results.append(launcher.collect(handles.pop(done_id)))
            running -= 1
        handle = launcher.launch(request(tmp_path / str(node_id), f"echo '@broker output n={node_id}'\n",
                                         node_id=node_id))
        handles[node_id] = handle
        launcher.watch(handle, exits)
        running += 1
    while handles:
        done_id, _, _ = exits.next()
        results.append(launcher.collect(handles.pop(done_id)))
    assert sorted(r.outputs["n"] for r in results) == list(range(200))
    assert {r.outcome for r in results} == {base.SUCCEEDED}
    assert zombie_children() == []


def test_launch_and_exit_callback_timings(launcher, tmp_path, capsys):
    """Measures launch() time for `true` and the delay from a payload's end to its callback."""
    launch_times = []
    for node_id in range(100):
        started = time.perf_counter()
        handle = launcher.launch(request(tmp_path / f"t{node_id}", "true\n", node_id=node_id))
        launch_times.append(time.perf_counter() - started)
        run_to_end(launcher, handle)
    latencies = []
    for node_id in range(100, 130):
        fifo = make_fifo(tmp_path / f"fifo{node_id}")
        handle = launcher.launch(request(tmp_path / f"t{node_id}", f"read x < {fifo}\n", node_id=node_id))
        exits = Exits()
        launcher.watch(handle, exits)
        released = release(fifo)
        latencies.append(exits.next()[2] - released)
        launcher.collect(handle)
    with capsys.disabled():
        print(f"\nlocal launcher: launch() p50 {statistics.median(launch_times) * 1e3:.2f} ms, "
              f"p90 {sorted(launch_times)[89] * 1e3:.2f} ms; payload end -> callback "
              f"p50 {statistics.median(latencies) * 1e3:.2f} ms, max {max(latencies) * 1e3:.2f} ms")
    assert statistics.median(launch_times) < 0.05  # loose: the target is about 1 ms
    assert all(latency > 0 for latency in latencies)


def test_close_joins_the_watcher_and_leaves_payloads_running(tmp_path):
    fifo = make_fifo(tmp_path / "go")
    launcher = LocalLauncher()
    handle = launcher.launch(request(tmp_path / "w", f"read x < {fifo}\nexit 4\n"))
    launcher.close()
    launcher.close()
    assert not any(t.name == "local-launcher-watcher" and t.is_alive() for t in threading.enumerate())
    assert alive(int(handle.job_id))
    release(fifo)
    wait_for(lambda: (tmp_path / "w" / "exit").exists())
    assert (tmp_path / "w" / "exit").read_text() == "4\n"
