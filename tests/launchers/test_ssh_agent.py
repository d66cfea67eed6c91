"""The SSH launcher under the account's resident agent on the host (``[hosts] ssh_agent``), against the real test
sshd: what only the agent has (one process per payload, its death, a broker's restart around it). What the
elf and the agent share (results, reports, timeouts, cancel, adoption) runs under both in test_ssh.py."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from broker.errors import ResourceError
from broker.launchers import base
from broker.launchers.ssh import SshLauncher
from broker.resources.sshpool import SshPool
from tests.fixtures import wait_for
from tests.launchers.helpers import resident_agents
from tests.launchers.test_ssh import host, pool, scratch  # noqa: F401 - the elf tests' fixtures, shared
from tests.resources.helpers import (WAIT_FOR_GO, Ended, account, alive, endpoint, read_int, release, request,
                                     run_to_end, ssh_host, unique_workflow, wait_started)

pytestmark = pytest.mark.slow


def launcher_of(sshd, host, pool) -> SshLauncher:
    return SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.1, lost_after=0.0, resident=True)


def commands() -> dict[int, list[bytes]]:
    """Every process's command line (its arguments, the empty one after the last NUL included)."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            found[int(name)] = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
    return found


def agents(directory: str) -> list[int]:
    """Pids of the resident agents serving ``directory``."""
    return resident_agents(directory)


def test_payloads_run_as_children_of_one_resident_agent_without_an_elf(sshd, host, pool):
    with launcher_of(sshd, host, pool) as launcher:
        handles = [launcher.launch(request(unique_workflow(), WAIT_FOR_GO, node_id=i)) for i in (1, 2)]
        pgids = [wait_started(h.workdir) for h in handles]
        [agent] = agents(launcher.endpoint.resident["dir"])
        for handle, pgid in zip(handles, pgids):
            assert int(handle.job_id) == pgid  # the payload's own pid: no elf between
            assert Path(f"/proc/{pgid}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(agent)
            assert not os.path.exists(f"{handle.workdir}/elf.pid")
            assert json.loads(Path(handle.workdir, "launch.json").read_text())["agent"] == \
                launcher.endpoint.resident["dir"]
            assert os.stat(handle.workdir).st_uid == pwd.getpwnam(sshd.user).pw_uid
        assert os.stat(f"/proc/{agent}").st_uid == pwd.getpwnam(sshd.user).pw_uid  # as the account
        for handle in handles:
            release(handle.workdir)
            assert run_to_end(launcher, handle).outputs == {"done": True}
        assert alive(agent)  # idle, but the launcher's relay watches it
    # idle and unwatched once the launcher (its relay) is gone, it leaves: a broker starts another when needed
    wait_for(lambda: not alive(agent), what="the idle agent to exit")


def test_a_kill_9_of_the_agent_loses_its_attempts_only_once_what_is_left_of_them_is_killed(sshd, host, pool):
    with launcher_of(sshd, host, pool) as launcher:
        quick = launcher.launch(request(unique_workflow(), "echo '@broker output n=1'\n", node_id=1))
        assert run_to_end(launcher, quick).outputs == {"n": 1}
        handle = launcher.launch(request(unique_workflow(), "sleep 300 &\necho $! > child\nsleep 300\n", node_id=2))
        pgid = wait_started(handle.workdir)
        child = wait_for(lambda: read_int(f"{handle.workdir}/child"), what="the background child")
        [agent] = agents(launcher.endpoint.resident["dir"])
        ended = Ended()
        launcher.watch(handle, ended)
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: ended.has(2), what="the attempt to be found lost")
        # the payload and its child died with the agent (its guardian killed them), before the probe said "lost"
        assert not alive(pgid) and not alive(child)
        result = launcher.collect(handle)
        assert (result.outcome, result.message) == (base.LOST, "no result: the host's resident agent ended before "
                                                               "the payload did (killed, or the host restarted), "
                                                               "and its payloads with it")
        # the recorded result before the kill stands, and the next attempt starts under a new agent
        assert launcher.recover(1, 1, quick.workdir, None).result.outputs == {"n": 1}
        retry = launcher.launch(request(unique_workflow(), "echo again\n", node_id=3))
        assert run_to_end(launcher, retry).outcome == base.SUCCEEDED


def test_a_restarted_broker_finds_finished_running_lost_and_absent_attempts_of_the_agent(sshd, host, pool):
    workflow = unique_workflow()
    quick = request(workflow, "echo '@broker output n=5'\nexit 2\n", node_id=1)
    slow = request(workflow, WAIT_FOR_GO, node_id=2)
    old_pool = SshPool()
    with launcher_of(sshd, host, old_pool) as old:  # the broker dies: its launcher and connections go
        handles = [old.launch(r) for r in (quick, slow)]
        run_to_end(old, handles[0])
        wait_started(handles[1].workdir)
    old_pool.close()
    with launcher_of(sshd, host, pool) as new:
        finished = new.recover(1, 1, quick.workdir, None)
        assert (finished.status, finished.result.outcome, finished.result.exit_code, finished.result.outputs) == \
            ("finished", base.FAILED, 2, {"n": 5})
        running = new.recover(2, 1, slow.workdir, None)
        assert running.status == "running" and running.handle.job_id == handles[1].job_id
        assert new.recover(4, 1, request(workflow, "", node_id=4).workdir, None).status == "absent"
        release(handles[1].workdir)
        assert run_to_end(new, running.handle).outputs == {"done": True}
        # a cancel of an adopted attempt goes through the agent too
        doomed = new.launch(request(workflow, "sleep 300\n", node_id=3))
        pgid = wait_started(doomed.workdir)
    with launcher_of(sshd, host, pool) as again:
        adopted = again.recover(3, 1, doomed.workdir, None)
        assert adopted.status == "running"
        again.cancel(adopted.handle)
        result = run_to_end(again, adopted.handle)
        assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
        assert not alive(pgid)


def test_attempts_that_push_still_run_under_an_elf(sshd, host, pool):
    with launcher_of(sshd, host, pool) as launcher:
        # nothing listens there: the push fails and is counted; the status file carries the result
        req = request(unique_workflow(), "echo '@broker output n=2'\n", push=("http://127.0.0.1:9/x", 7, "s"))
        handle = launcher.launch(req)
        assert run_to_end(launcher, handle).outputs == {"n": 2}
        assert os.path.exists(f"{handle.workdir}/elf.pid")
        assert "agent" not in json.loads(Path(handle.workdir, "launch.json").read_text())


def relays(directory: str) -> list[int]:
    """Pids of the host agent relays of the programs installed in ``directory``."""
    return [pid for pid, args in commands().items()
            if len(args) >= 3 and args[-2:] == [b"relay", b""] and args[-3].startswith(os.fsencode(directory))]


def test_launches_go_through_one_relay_and_start_no_host_agent_process_each(sshd, host, pool):
    with launcher_of(sshd, host, pool) as launcher:
        commands = []
        run = launcher.endpoint.shell.run
        launcher.endpoint.shell.run = lambda command, **kw: commands.append(command) or run(command, **kw)
        handles = [launcher.launch(request(unique_workflow(), f"echo '@broker output n={i}'\n", node_id=i))
                   for i in range(1, 21)]
        assert [run_to_end(launcher, h).outputs for h in handles] == [{"n": i} for i in range(1, 21)]
        assert launcher.endpoint.relays == 1
        # neither the starts nor the polls ran a command of their own (the only one: installing the programs)
        assert not [c for c in commands if c.endswith((" start", " probe"))]
        [relay] = relays(str(Path(launcher.endpoint.elf_path).parent))
    wait_for(lambda: not alive(relay), what="the relay to end with its launcher")


def test_a_relay_that_stops_or_dies_costs_a_launch_nothing_and_never_starts_an_attempt_twice(sshd, host):
    pool = SshPool(max_channels=8, command_timeout=2.0)  # a stopped relay is given up after 2 s
    try:
        with launcher_of(sshd, host, pool) as launcher:
            run_to_end(launcher, launcher.launch(request(unique_workflow(), "true\n")))
            [relay] = relays(str(Path(launcher.endpoint.elf_path).parent))
            os.kill(relay, signal.SIGSTOP)  # it will read the next request only after the launch gave up on it
            try:
                req = request(unique_workflow(), "echo run >> $WB_WORKDIR/runs\necho '@broker output ok=1'\n")
                handle = launcher.launch(req)  # answered by the request as one command
            finally:
                os.kill(relay, signal.SIGCONT)
            assert run_to_end(launcher, handle).outputs == {"ok": 1}
            # the relay, continued, read the same request: the launch record exists, nothing starts twice
            wait_for(lambda: not alive(relay), what="the given-up relay to end")
            assert Path(handle.workdir, "runs").read_text() == "run\n"
            run_to_end(launcher, launcher.launch(request(unique_workflow(), "true\n", node_id=2)))  # a new relay
            [relay] = relays(str(Path(launcher.endpoint.elf_path).parent))
            opened = launcher.endpoint.relays
            os.kill(relay, signal.SIGKILL)  # a relay killed outright: the next launch opens another
            after = launcher.launch(request(unique_workflow(), "echo '@broker output again=1'\n", node_id=3))
            # as one command while the relay's end is not seen yet, else through a new one (seen at once when
            # the machine is loaded and the launch comes late)
            assert run_to_end(launcher, after).outputs == {"again": 1}
            assert launcher.endpoint.relays in (opened, opened + 1)
            run_to_end(launcher, launcher.launch(request(unique_workflow(), "true\n", node_id=4)))
            assert launcher.endpoint.relays == opened + 1  # one new relay in all, whichever way
    finally:
        pool.close()


def test_a_host_without_the_configured_python_fails_the_launch_with_a_clear_message(sshd, scratch, pool):
    host = ssh_host(sshd, scratch, python="/no/such/python3")
    with launcher_of(sshd, host, pool) as launcher:
        with pytest.raises(ResourceError, match=r"/no/such/python3 not found \(set <python> in the host catalogue\)"):
            launcher.launch(request(unique_workflow(), "true\n"))


def test_with_one_ssh_channel_there_is_no_relay_and_launches_go_as_commands(sshd, host):
    pool = SshPool(max_channels=1, command_timeout=30.0)  # a relay would hold the only channel: polls would wait
    try:
        with launcher_of(sshd, host, pool) as launcher:
            handles = [launcher.launch(request(unique_workflow(), f"echo '@broker output n={i}'\n", node_id=i))
                       for i in (1, 2)]
            assert [run_to_end(launcher, h).outputs for h in handles] == [{"n": 1}, {"n": 2}]
            assert launcher.endpoint.relays == 0
    finally:
        pool.close()


def test_a_host_where_no_agent_can_run_runs_its_attempts_under_the_elf(sshd, scratch, pool, caplog):
    # the host's python refuses to become the agent, as one older than 3.9 (no pidfd) would
    place = Path(tempfile.mkdtemp(prefix="broker-test-python-"))
    place.chmod(0o755)
    refusing = place / "no-agent-python"
    tries = place / "tries"  # each time the host is asked to start the agent (written as the account)
    tries.touch()
    tries.chmod(0o666)
    refusing.write_text(f'#!/bin/sh\ncase "$3" in */resident-*) echo try >> {tries}; echo "no pidfd here" >&2; '
                        'exit 1;; esac\nexec python3 "$@"\n')
    refusing.chmod(0o755)
    try:
        host = ssh_host(sshd, scratch, python=str(refusing))
        with launcher_of(sshd, host, pool) as launcher:
            handles = [launcher.launch(request(unique_workflow(), f"echo '@broker output n={i}'\n", node_id=i))
                       for i in (1, 2)]
            assert [run_to_end(launcher, h).outputs for h in handles] == [{"n": 1}, {"n": 2}]
            assert tries.read_text() == "try\n"  # not at each launch: once, then again when the retry is due
            launcher._no_agent_until = 0.0
            handles.append(launcher.launch(request(unique_workflow(), "echo '@broker output n=3'\n", node_id=3)))
            assert run_to_end(launcher, handles[-1]).outputs == {"n": 3}
            assert tries.read_text() == "try\ntry\n"
        for handle in handles:
            assert os.path.exists(f"{handle.workdir}/elf.pid")
            assert "agent" not in json.loads(Path(handle.workdir, "launch.json").read_text())
        warnings = [r.getMessage() for r in caplog.records if "attempts run under the elf" in r.getMessage()]
        assert len(warnings) == 1 and "no pidfd here" in warnings[0]  # said once, with the host's reason
    finally:
        shutil.rmtree(place)


def test_the_relay_tells_of_ends_and_of_a_dead_agent_at_once_not_at_the_next_poll(sshd, host, pool):
    # a poll every 10 minutes: only the relay's events can end these attempts within the test's deadlines
    with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=600.0, resident=True) as launcher:
        first = launcher.launch(request(unique_workflow(), "echo '@broker output n=1'\n", node_id=1))
        ended = Ended()
        launcher.watch(first, ended)
        wait_for(lambda: ended.has(1), deadline=20.0, what="the end, told by the relay")
        assert launcher.collect(first).outputs == {"n": 1}
        doomed = launcher.launch(request(unique_workflow(), "sleep 300\n", node_id=2))
        wait_started(doomed.workdir)
        launcher.watch(doomed, ended)
        [agent] = agents(launcher.endpoint.resident["dir"])
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: ended.has(2), deadline=20.0, what="the lost attempt, told by the relay")
        assert launcher.collect(doomed).outcome == base.LOST
