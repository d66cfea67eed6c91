"""The resident local agent with real processes: one process per payload, kill -9 of the agent, of the broker.

Everything the local launcher guarantees is also tested under the agent by the local launcher's own tests
(``tests/launchers/conftest.py`` runs them twice); these are the agent's own faults.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from broker.launchers import base
from broker.launchers.agentlocal import AgentLauncher
from broker.launchers.workdir import is_alive
from tests.fixtures import wait_for
from tests.launchers.helpers import Exits, alive, make_fifo, parent_of, release, request, run_to_end

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read().split(b"\0")[:-1]


@pytest.fixture
def state(tmp_path):
    return str(tmp_path / "agents")


def test_the_payload_is_the_agents_own_child_with_no_wrapper_between(state, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    with AgentLauncher(state) as launcher:
        handle = launcher.launch(request(tmp_path / "w", f"read x < {fifo}\nexit 3\n"))
        pid = int(handle.job_id)
        # the interpreter, exec'd by the agent's child (the agent wrote its pid before it answered)
        wait_for(lambda: cmdline(pid) == [b"/bin/sh", str(tmp_path / "w" / "payload").encode()])
        agent = parent_of(pid)
        assert cmdline(agent)[-2] == b"-" and cmdline(agent)[-1].startswith(state.encode())
        assert os.getsid(pid) == os.getpgid(pid) == pid  # its own session: the group the kills go to
        assert os.getsid(agent) != os.getsid(0)  # the agent too is out of the broker's session
        release(fifo)
        assert run_to_end(launcher, handle).exit_code == 3
        # the next launch goes to the same agent
        again = launcher.launch(request(tmp_path / "w2", f"read x < {fifo}\n", node_id=2))
        wait_for(lambda: (tmp_path / "w2" / "pid").exists())
        assert parent_of(int(again.job_id)) == agent
        release(fifo)
        run_to_end(launcher, again)
    wait_for(lambda: not alive(agent), what="the agent to exit once no broker and no payload remain")


def test_a_killed_agent_keeps_recorded_results_its_payloads_die_and_only_then_are_lost(state, tmp_path):
    exits = Exits()
    with AgentLauncher(state, kill_grace=0.5) as launcher:
        done = launcher.launch(request(tmp_path / "done", "echo '@broker output x=1'\nexit 3\n", node_id=1))
        assert run_to_end(launcher, done).exit_code == 3
        # a payload with a child of its own in its group
        running = launcher.launch(request(tmp_path / "run", "sleep 100 &\necho $! > child.pid\nwait\n", node_id=2))
        launcher.watch(running, exits)
        child = int(wait_for(lambda: (tmp_path / "run" / "child.pid").read_text().strip()
                             if (tmp_path / "run" / "child.pid").exists() else None))
        payload = int(running.job_id)
        agent = parent_of(payload)
        lost = []
        launcher.watch(running, lambda *key: lost.append((alive(payload), alive(child))))

        os.kill(agent, signal.SIGKILL)

        assert exits.next()[:2] == (2, 1)
        # the payload was dead when its attempt was called lost, and a new agent had sent the SIGKILL to what
        # was left of its group (the child, reparented, may take an instant to go)
        assert wait_for(lambda: lost)[0][0] is False
        wait_for(lambda: not alive(child), what="the payload's child to be killed by the new agent")
        assert not alive(payload)
        result = launcher.collect(running)
        assert (result.outcome, result.message) == (base.LOST, "no exit status: the process disappeared")
        assert launcher.recover(1, 1, str(tmp_path / "done"), done.job_id).result.exit_code == 3
        assert launcher.recover(2, 1, str(tmp_path / "run"), running.job_id).status == "lost"
        # the new agent runs what comes next
        after = launcher.launch(request(tmp_path / "after", "exit 0\n", node_id=3))
        assert run_to_end(launcher, after).outcome == base.SUCCEEDED
        journal = open(os.path.join(state, os.listdir(state)[0], "journal")).read().splitlines()
        assert str(tmp_path / "run") not in "".join(journal)  # the new agent's journal starts empty


def test_a_killed_agent_takes_its_payloads_and_their_children_with_it_with_no_broker_there(state, tmp_path):
    launcher = AgentLauncher(state)
    handle = launcher.launch(request(tmp_path / "run", "sleep 100 &\necho $! > child.pid\nexec sleep 100\n"))
    child = int(wait_for(lambda: (tmp_path / "run" / "child.pid").read_text().strip()
                         if (tmp_path / "run" / "child.pid").exists() else None))
    payload = int(handle.job_id)
    agent = parent_of(payload)
    guardian = parent_of(agent)
    assert cmdline(guardian) == cmdline(agent)  # the agent's parent: its guardian, the same program
    launcher.close()  # no broker is connected now; the payload runs on, recorded by the agent

    os.kill(agent, signal.SIGKILL)

    # the guardian kills what the agent left running (a payload and its child), then goes: no new agent, no
    # broker needed; the attempt's lock is free and it has no verdict (a broker will find it lost)
    wait_for(lambda: not alive(payload) and not alive(child), what="the payload and its child to be killed")
    wait_for(lambda: not alive(guardian), what="the guardian to exit")
    assert not is_alive(str(tmp_path / "run")) and not (tmp_path / "run" / "exit").exists()
    log = open(os.path.join(state, os.listdir(state)[0], "agent.log")).read()
    # (a process still dying when the sweep looks again is signalled, and counted, again)
    assert re.search(r"the agent ended with payloads running: killed [2-9] process\(es\)", log), log


def test_an_account_whose_agent_cannot_start_gets_wrappers_said_once_and_tried_again_later(
        state, tmp_path, monkeypatch, caplog):
    from broker.launchers import agentstart

    tries = tmp_path / "tries"
    broken = tmp_path / "python3"  # a Python that cannot become the agent (too old, say)
    broken.write_text(f'#!/bin/sh\necho try >> "{tries}"\necho "Python 2.7 is too old" >&2\nexit 1\n')
    broken.chmod(0o755)
    monkeypatch.setattr(agentstart, "interpreter", lambda run_as: str(broken))
    with AgentLauncher(state) as launcher:
        handles = [launcher.launch(request(tmp_path / f"w{i}", f"exit {i}\n", node_id=i)) for i in (1, 2)]
        for i, handle in enumerate(handles, 1):
            pid = int(handle.job_id)
            assert run_to_end(launcher, handle).exit_code == i  # ran all the same
            assert (tmp_path / f"w{i}" / "exit").read_text() == f"{i}\n"  # the wrapper's files
        assert tries.read_text() == "try\n"  # once, at the first launch
        warnings = [r.getMessage() for r in caplog.records if "start under wb-run.sh wrappers" in r.getMessage()]
        assert len(warnings) == 1 and "Python 2.7 is too old" in warnings[0], warnings
        # once the retry is due, the agent is tried again: now it starts, and the next payload is its child
        monkeypatch.setattr(agentstart, "interpreter", lambda run_as: os.path.realpath(sys.executable))
        launcher._no_agent = {login: 0.0 for login in launcher._no_agent}
        fifo = make_fifo(tmp_path / "go")
        third = launcher.launch(request(tmp_path / "w3", f"read x < {fifo}\n", node_id=3))
        assert cmdline(parent_of(int(third.job_id)))[-2] == b"-"  # the agent's
        release(fifo)
        assert run_to_end(launcher, third).outcome == base.SUCCEEDED
    assert pid > 0


def test_a_payload_whose_pid_cannot_be_recorded_is_killed_not_left_running(state, tmp_path):
    workdir = tmp_path / "w"
    (workdir / "pid").mkdir(parents=True)  # the agent cannot write the attempt's pid file
    with AgentLauncher(state) as launcher:
        handle = launcher.launch(request(workdir, "sleep 100\n"))
        result = run_to_end(launcher, handle)
        assert (result.outcome, result.exit_code) == (base.FAILED, 128 + signal.SIGKILL)
        assert not alive(int(handle.job_id))


THE_BROKER = textwrap.dedent("""
    import json, sys
    from broker.launchers.agentlocal import AgentLauncher
    from tests.launchers.helpers import request
    state, root, fifo = sys.argv[1:]
    launcher = AgentLauncher(state)
    handles = {}
    for node_id, text in ((1, "exit 4\\n"), (2, f"read x < {fifo}\\necho ran >> {root}/ran\\nexit 6\\n"),
                          (3, "sleep 100\\n")):
        handles[node_id] = launcher.launch(request(f"{root}/n{node_id}", text, node_id=node_id)).job_id
    print(json.dumps(handles), flush=True)
    sys.stdin.read()  # until the test kills this process
""")


def test_a_broker_killed_while_its_agent_runs_payloads_is_followed_by_one_that_collects_them(state, tmp_path):
    fifo = make_fifo(tmp_path / "go")
    broker = subprocess.Popen([sys.executable, "-c", THE_BROKER, state, str(tmp_path), fifo], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        jobs = {int(k): v for k, v in json.loads(broker.stdout.readline()).items()}
        # ended and recorded: the agent writes the verdict, then journals the end and lets the launch lock go
        # (until then a recovering broker rightly finds the attempt still running)
        wait_for(lambda: (tmp_path / "n1" / "exit").exists() and not is_alive(str(tmp_path / "n1")))
        agent = parent_of(int(jobs[2]))
    finally:
        broker.kill()
        broker.wait()
    assert alive(int(jobs[2])) and alive(int(jobs[3]))  # the agent runs on without its broker
    with AgentLauncher(state, kill_grace=0.5) as launcher:
        found = {n: launcher.recover(n, 1, str(tmp_path / f"n{n}"), jobs[n]) for n in (1, 2, 3)}
        assert (found[1].status, found[1].result.exit_code) == ("finished", 4)  # ended with no broker watching
        assert found[2].status == found[3].status == "running"
        exits = Exits()
        launcher.watch(found[2].handle, exits)
        release(fifo)
        assert exits.next()[:2] == (2, 1)
        assert launcher.collect(found[2].handle).exit_code == 6
        launcher.watch(found[3].handle, exits)
        launcher.cancel(found[3].handle)  # through the same agent, which signals its own child's group
        assert exits.next()[:2] == (3, 1)
        assert launcher.collect(found[3].handle).outcome == base.CANCELLED
        assert parent_of(os.getpid()) != agent and alive(agent)  # the same agent served both brokers
    assert (tmp_path / "ran").read_text() == "ran\n"  # ran once
    assert not alive(int(jobs[3]))


def test_a_payload_inherits_no_descriptor_of_the_agent(state, tmp_path):
    # the launch lock above all: a payload holding it would keep its attempt "alive" through its children
    with AgentLauncher(state) as launcher:
        handle = launcher.launch(request(tmp_path / "w", 'for f in /proc/$$/fd/*; do readlink "$f" || true; done\n'))
        assert run_to_end(launcher, handle).outcome == base.SUCCEEDED
    workdir = tmp_path / "w"
    assert set((workdir / "stdout").read_text().split()) == {"/dev/null", str(workdir / "stdout"),
                                                             str(workdir / "stderr"), str(workdir / "payload")}


def test_an_interpreter_on_the_payloads_path_is_found_by_the_agent_and_searched_again_once_gone(state, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for directory, word in ((first, "first"), (second, "second")):
        directory.mkdir()
        (directory / "interp").write_text(f'#!/bin/sh\necho {word} "$(cat "$1")"\n')
        (directory / "interp").chmod(0o755)
    env = (("PATH", f"{first}:{second}:/usr/bin:/bin"),)
    with AgentLauncher(state) as launcher:
        one = launcher.launch(request(tmp_path / "w1", "body", interpreter="interp", env=env))
        assert run_to_end(launcher, one).outcome == base.SUCCEEDED
        assert (tmp_path / "w1" / "stdout").read_text() == "first body\n"
        (first / "interp").unlink()  # gone while the agent still holds where it found it
        two = launcher.launch(request(tmp_path / "w2", "body", node_id=2, interpreter="interp", env=env))
        assert run_to_end(launcher, two).outcome == base.SUCCEEDED
        assert (tmp_path / "w2" / "stdout").read_text() == "second body\n"
        (second / "interp").unlink()
        three = launcher.launch(request(tmp_path / "w3", "body", node_id=3, interpreter="interp", env=env))
        assert run_to_end(launcher, three).exit_code == 127  # as a shell says "not found"


def test_the_agent_leaves_a_search_through_a_relative_directory_to_the_child(tmp_path):
    from broker.elf.agent import Agent

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "interp").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "interp").chmod(0o755)
    agent = Agent(str(tmp_path))
    try:
        assert agent.find("interp", {b"PATH": os.fsencode(tmp_path / "bin")}) == str(tmp_path / "bin" / "interp")
        # the child's working directory is the attempt's, not the agent's: only the child can search it
        assert agent.find("interp", {b"PATH": b"tools:" + os.fsencode(tmp_path / "bin")}) is None
        assert agent.find("/bin/sh", {}) is None  # a path: nothing to search
        assert agent.find("no-such-interpreter", {b"PATH": b"/usr/bin:/bin"}) is None
    finally:
        agent.listener.close()
        agent.epoll.close()


@pytest.mark.parametrize("agent_runs_on", [True, False], ids=["agent-runs-on", "agent-gone"])
def test_an_adopted_attempt_whose_end_went_to_no_one_ends_once_a_stopped_brokers_lock_is_released(
        state, tmp_path, monkeypatch, agent_runs_on):
    # A broker stopped (SIGSTOP) while it starts an attempt keeps its copy of the locked launch descriptor: the
    # attempt looks alive by its lock after the agent has ended it and told every broker then connected (and
    # the agent may have exited since). A broker that adopts it later must still see its end, once the stopped
    # one lets go of the lock.
    from broker.launchers import agentlocal

    fifo = make_fifo(tmp_path / "go")
    kept = []
    locking = agentlocal.lock_exclusive
    monkeypatch.setattr(agentlocal, "lock_exclusive", lambda path: kept.append(os.dup(fd := locking(path))) or fd)
    workdir = tmp_path / "w"
    with AgentLauncher(state) as stopped:
        handle = stopped.launch(request(workdir, "echo '@broker output x=7'\nexit 5\n"))
        if agent_runs_on:  # another payload keeps the agent running
            other = stopped.launch(request(tmp_path / "other", f"read x < {fifo}\n", node_id=2))
        wait_for(lambda: (workdir / "exit").exists(), what="the payload to end")
    with AgentLauncher(state) as launcher:
        found = launcher.recover(1, 1, str(workdir), handle.job_id)
        assert found.status == "running"  # its lock is held (by the stopped broker's descriptor)
        exits = Exits()
        launcher.watch(found.handle, exits)
        os.close(kept[0])  # the stopped broker goes on, or dies
        assert exits.next()[:2] == (1, 1)
        result = launcher.collect(found.handle)
        assert (result.exit_code, result.outputs) == (5, {"x": 7})
        if agent_runs_on:
            os.close(kept[1])
            assert launcher.recover(2, 1, str(tmp_path / "other"), other.job_id).status == "running"
            release(fifo)
