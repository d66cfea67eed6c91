"""The SSH launcher against the real test sshd: payloads run as the non-root test account, detached under the
elf; results, reports, timeouts, cancel, recovery by a new launcher, one connection per account, the elf
installed once."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from broker.errors import ResourceError, StateError
from broker.launchers import base
from broker.launchers.ssh import SshLauncher
from broker.resources.sshpool import SshPool
from tests.fixtures import wait_for
from tests.resources.helpers import (LOCAL_ROOT, WAIT_FOR_GO, Ended, account, alive, endpoint, read_int, release,
                                     request, run_to_end, server_connections, ssh_host, unique_workflow, wait_started)


@pytest.fixture(scope="module")
def scratch(sshd):
    """A scratch directory (relative: under each account's home) for this module, removed afterwards."""
    name = f"broker-tests-{uuid.uuid4().hex[:8]}"
    yield name
    for user in (sshd.user, sshd.user2):
        shutil.rmtree(os.path.join(pwd.getpwnam(user).pw_dir, name), ignore_errors=True)


@pytest.fixture
def pool():
    it = SshPool(max_channels=8, command_timeout=30.0)
    yield it
    it.close()


@pytest.fixture
def host(sshd, scratch):
    return ssh_host(sshd, scratch, env=(("FROM_HOST", "host"), ("SHARED", "host")))


@pytest.fixture(params=["elf", "resident"])
def launcher(request, sshd, host, pool):
    """Under an elf per payload, and under the account's resident agent on the host (``[hosts] ssh_agent``): the
    same behaviour through the same files."""
    with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1, lost_after=5.0,
                     resident=request.param == "resident") as it:
        yield it


def test_a_payload_runs_as_the_account_in_a_private_work_directory_with_outputs_and_progress(launcher, sshd):
    text = ("id -un > whoami\necho '@broker progress 40 \"reading\"'\necho '@broker output rows=12'\n"
            'echo "@broker output env=\\"$FROM_HOST|$SHARED|$WB_WORKDIR\\""\necho oops >&2\n')
    handle = launcher.launch(request(unique_workflow(), text, env=(("SHARED", "node"),)))
    assert handle.host == f"{sshd.user}@sshtest"
    result = run_to_end(launcher, handle)
    assert result == base.AttemptResult(node_id=1, attempt=1, outcome=base.SUCCEEDED, exit_code=0,
                                        outputs={"rows": 12, "env": f"host|node|{handle.workdir}"},
                                        progress=(40.0, "reading"), message="exit code 0")
    workdir = Path(handle.workdir)
    assert (workdir / "whoami").read_text() == f"{sshd.user}\n"
    assert (workdir / "stderr").read_text() == "oops\n"
    owner = pwd.getpwnam(sshd.user).pw_uid
    root = workdir.parents[2]  # <scratch>/<account>
    for directory in (workdir, workdir.parent, root):
        info = os.stat(directory)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (owner, 0o700), directory
    assert root.name == sshd.user


@pytest.mark.slow
def test_another_account_cannot_read_the_work_directory(launcher, sshd):
    handle = launcher.launch(request(unique_workflow(), "echo secret > data\n"))
    run_to_end(launcher, handle)
    peek = subprocess.run(["runuser", "-u", sshd.user2, "--", "cat", f"{handle.workdir}/data"],
                          capture_output=True, text=True, check=False)
    assert peek.returncode != 0 and "Permission denied" in peek.stderr


@pytest.mark.slow
def test_a_failing_payload_gives_its_exit_code(launcher):
    result = run_to_end(launcher, launcher.launch(request(unique_workflow(), "exit 3\n")))
    assert (result.outcome, result.exit_code, result.message) == (base.FAILED, 3, "exit code 3")


@pytest.mark.slow
def test_the_elf_kills_a_payload_over_its_timeout(launcher):
    handle = launcher.launch(request(unique_workflow(), "sleep 300 &\nsleep 300\n", timeout=1.0))
    pgid = wait_started(handle.workdir)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.TIMEOUT, "killed after the timeout of 1 s")
    wait_for(lambda: not alive(pgid), what="the payload's group to be gone")


@pytest.mark.slow
def test_cancel_kills_the_whole_process_group_of_a_running_payload(launcher):
    handle = launcher.launch(request(unique_workflow(), "sleep 300 &\necho $! > child\nsleep 300\n"))
    pgid = wait_started(handle.workdir)
    child = wait_for(lambda: read_int(f"{handle.workdir}/child"), what="the background child")
    launcher.cancel(handle)
    launcher.cancel(handle)  # idempotent
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
    wait_for(lambda: not alive(pgid) and not alive(child), what="payload and child to be gone")


@pytest.mark.slow
def test_reports_arrive_while_the_payload_runs(launcher):
    text = "echo '@broker progress 10 \"start\"'\necho '@broker output early=1'\n" + WAIT_FOR_GO
    handle = launcher.launch(request(unique_workflow(), text))
    ended = Ended()
    launcher.watch(handle, ended)
    seen = wait_for(lambda: launcher.reports(handle, 0)[0], what="reports of the running payload")
    assert [(r.kind, r.percent, r.text, r.value) for r in seen] == [
        ("progress", 10.0, "start", None), ("output", None, "early", 1)]
    _, offset = launcher.reports(handle, 0)
    assert launcher.reports(handle, offset) == ([], offset)
    with pytest.raises(StateError, match="still running"):
        launcher.collect(handle)
    release(handle.workdir)
    wait_for(lambda: ended.has(1), what="the payload to end")
    assert launcher.collect(handle).outputs == {"early": 1, "done": True}


@pytest.mark.slow
def test_launching_a_running_attempt_again_adopts_it_and_a_finished_one_is_refused(launcher):
    req = request(unique_workflow(), WAIT_FOR_GO)
    first = launcher.launch(req)  # say its reply was lost: the engine launches the same attempt again
    again = launcher.launch(req)
    assert again.job_id == first.job_id and again.workdir == first.workdir
    release(first.workdir)
    assert run_to_end(launcher, again).outcome == base.SUCCEEDED
    with pytest.raises(StateError, match=r"already holds a started attempt \(finished\)"):
        launcher.launch(req)


@pytest.mark.slow
def test_a_new_launcher_recovers_finished_running_lost_and_absent_attempts(sshd, host, pool):
    workflow = unique_workflow()
    quick, slow, doomed = (request(workflow, "echo '@broker output n=5'\nexit 2\n", node_id=1),
                           request(workflow, WAIT_FOR_GO, node_id=2), request(workflow, "sleep 300\n", node_id=3))
    old_pool = SshPool()
    with SshLauncher(endpoint(old_pool, host, account(sshd, host)), poll_interval=0.1) as old:
        handles = [old.launch(r) for r in (quick, slow, doomed)]
        run_to_end(old, handles[0])
        wait_started(handles[1].workdir)
        doomed_pgid = wait_started(handles[2].workdir)
    old_pool.close()
    # the host crashes under the third: its elf and payload die without a result
    os.kill(read_int(f"{handles[2].workdir}/elf.pid"), signal.SIGKILL)
    os.killpg(doomed_pgid, signal.SIGKILL)
    wait_for(lambda: not alive(doomed_pgid), what="the doomed payload to die")

    with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1) as new:
        finished = new.recover(1, 1, quick.workdir, None)
        assert finished.status == "finished"
        assert (finished.result.outcome, finished.result.exit_code, finished.result.outputs) == (base.FAILED, 2, {"n": 5})
        running = new.recover(2, 1, slow.workdir, handles[1].job_id)
        assert running.status == "running" and running.handle.workdir == handles[1].workdir
        lost = new.recover(3, 1, doomed.workdir, handles[2].job_id)
        assert (lost.status, lost.result.outcome) == ("lost", base.LOST)
        assert "died without recording" in lost.result.message
        assert new.recover(4, 1, request(workflow, "", node_id=4).workdir, None).status == "absent"
        ended = Ended()
        new.watch(running.handle, ended)
        release(handles[1].workdir)
        wait_for(lambda: ended.has(2), what="the adopted attempt to end")
        assert new.collect(running.handle).outputs == {"done": True}


@pytest.mark.slow
def test_connections_stay_at_one_per_account_while_many_more_nodes_run(sshd, host):
    pool = SshPool(max_channels=4)
    nodes = 40
    workflow = unique_workflow()
    try:
        with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1) as launcher:
            handles: list = []
            lock = threading.Lock()

            def start(i: int) -> None:
                handle = launcher.launch(request(workflow, WAIT_FOR_GO, node_id=i))
                with lock:
                    handles.append(handle)

            peak = 0
            threads = [threading.Thread(target=start, args=(i,)) for i in range(1, nodes + 1)]
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                peak = max(peak, server_connections(sshd.port))
            for thread in threads:
                thread.join()
            assert len(handles) == nodes
            ended = Ended()
            for handle in handles:
                launcher.watch(handle, ended)
            for handle in handles:
                wait_started(handle.workdir)
                release(handle.workdir)
            while ended.count() < nodes:
                peak = max(peak, server_connections(sshd.port))
            results = [launcher.collect(h) for h in handles]
        assert {r.outcome for r in results} == {base.SUCCEEDED}
        assert peak == 1 and pool.opened() == 1
        # a second account is a second connection, not one per node
        with SshLauncher(endpoint(pool, host, account(sshd, host, sshd.user2)), poll_interval=0.1) as other:
            run_to_end(other, other.launch(request(unique_workflow(), "true\n")))
            assert server_connections(sshd.port) == 2
    finally:
        pool.close()
    assert server_connections(sshd.port) == 0


@pytest.mark.slow
def test_the_elf_is_installed_once_per_host_account_and_version(sshd, scratch, pool):
    host = ssh_host(sshd, f"{scratch}/install-once")
    first = endpoint(pool, host, account(sshd, host))
    with SshLauncher(first, poll_interval=0.1) as launcher:
        run_to_end(launcher, launcher.launch(request(unique_workflow(), "true\n")))
        run_to_end(launcher, launcher.launch(request(unique_workflow(), "true\n")))
    elf = Path(first.elf_path)
    installed = elf.stat()
    other_pool = SshPool()  # a restarted broker: new pool, new launcher
    second = endpoint(other_pool, host, account(sshd, host))
    with SshLauncher(second, poll_interval=0.1) as launcher:
        run_to_end(launcher, launcher.launch(request(unique_workflow(), "true\n")))
    other_pool.close()
    assert (first.installs, second.installs) == (1, 0)
    assert (elf.stat().st_ino, elf.stat().st_mtime_ns) == (installed.st_ino, installed.st_mtime_ns)
    scripts = sorted(p.name for p in elf.parent.iterdir() if p.suffix == ".py")
    assert scripts == sorted([elf.name, Path(first.agent_path).name, Path(first.resident["program"]).name])


@pytest.mark.slow
def test_staged_inputs_are_pushed_to_the_host_and_outputs_fetched_back(sshd, host, pool, tmp_path):
    # the engine's attempt directory (under tmp_path) holds what stage-in brought
    ep = endpoint(pool, host, account(sshd, host), local_root=str(tmp_path))
    req = request(unique_workflow(), "tr a-z A-Z < in/data.txt > out.txt\n")
    local = Path(req.workdir.replace(LOCAL_ROOT, str(tmp_path)))
    (local / "in").mkdir(parents=True)
    (local / "in" / "data.txt").write_text("hello\n")
    req = dataclasses.replace(req, workdir=str(local))
    with SshLauncher(ep, poll_interval=0.1) as launcher:
        handle = launcher.launch(req)
        assert handle.workdir != str(local)
        assert run_to_end(launcher, handle).outcome == base.SUCCEEDED
        assert launcher.fetch_outputs(handle, ["out.txt"], str(local)) == 1
        assert (local / "out.txt").read_text() == "HELLO\n"
        with pytest.raises(ResourceError, match="must not contain '..'"):
            launcher.fetch_outputs(handle, ["../../../../etc/passwd"], str(local))


def test_a_host_without_the_configured_python_fails_with_a_clear_message(sshd, scratch, pool):
    host = ssh_host(sshd, scratch, python="/no/such/python3")
    with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1) as launcher:
        with pytest.raises(ResourceError, match=r"/no/such/python3 not found \(set <python> in the host catalogue\)"):
            launcher.launch(request(unique_workflow(), "true\n"))


@pytest.mark.slow
def test_an_elf_stopped_before_its_first_instruction_is_running_never_lost_nor_absent(sshd, scratch, pool):
    # the host's python stops itself when it is about to become the elf (never when it runs the agent), as an
    # elf that has not run a single instruction yet: on a loaded host, or between the agent's fork and exec
    place = Path(tempfile.mkdtemp(prefix="broker-test-python-"))
    place.chmod(0o755)  # the account can run what is in it, not change it
    stopper = place / "stopping-python"
    stopper.write_text('#!/bin/sh\n[ "$4" = run ] && kill -STOP $$\nexec python3 "$@"\n')
    stopper.chmod(0o755)
    host = ssh_host(sshd, scratch, python=str(stopper))
    req = request(unique_workflow(), "echo ran >> ran\n" + WAIT_FOR_GO)
    # lost_after=0: the old rule (a young elf without a pid is given that long) cannot hide the answer
    with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1, lost_after=0.0) as first:
        handle = first.launch(req)
    elf = int(handle.job_id)
    try:
        wait_for(lambda: alive(elf) and open(f"/proc/{elf}/stat").read().rsplit(")", 1)[1].split()[0] == "T",
                 what="the elf to stop")
        assert not os.path.exists(f"{handle.workdir}/elf.pid")
        with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1, lost_after=0.0) as new:
            found = new.recover(1, 1, req.workdir, None)
            assert found.status == "running"
            ended = Ended()
            new.watch(found.handle, ended)
            rounds = new.poller.rounds
            wait_for(lambda: new.poller.rounds >= rounds + 3, what="three polls")
            assert not ended.has(1)  # still running, poll after poll
            os.kill(elf, signal.SIGCONT)
            wait_started(handle.workdir)
            release(handle.workdir)
            wait_for(lambda: ended.has(1), what="the adopted attempt to end")
            assert new.collect(found.handle).outputs == {"done": True}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(elf, signal.SIGCONT)
        shutil.rmtree(place)
    assert Path(handle.workdir, "ran").read_text() == "ran\n"
