"""Helpers for the launcher tests: requests, waiting on callbacks, FIFOs that end payloads on cue."""

import errno
import os
import queue
import time

from broker.launchers.base import LaunchRequest
from tests.fixtures import wait_for

#: seconds: generous bound for anything that should happen "at once" on a loaded test machine
PATIENCE = 20.0
#: seconds between two checks of a polled condition
POLL = 0.005


def request(workdir, text, *, node_id=1, attempt=1, kind="sh", **fields):
    return LaunchRequest(node_id=node_id, attempt=attempt, workflow_global_id="wf-test", node_path=f"n{node_id}",
                         workdir=str(workdir), payload_type=kind, payload_text=text, **fields)




class Exits:
    """An exit callback that records (node_id, attempt, perf_counter time) for the test to wait on."""

    def __init__(self):
        self.queue = queue.Queue()

    def __call__(self, node_id, attempt):
        self.queue.put((node_id, attempt, time.perf_counter()))

    def next(self, timeout=PATIENCE):
        return self.queue.get(timeout=timeout)


def run_to_end(launcher, handle):
    exits = Exits()
    launcher.watch(handle, exits)
    assert exits.next()[:2] == (handle.node_id, handle.attempt)
    return launcher.collect(handle)


def alive(pid):
    """Whether ``pid`` is a live process (a zombie is not)."""
    return state_of(pid) not in (None, "Z", "X")


def _stat(pid):
    """(state letter, parent pid) of process ``pid``, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def state_of(pid):
    """The one-letter state of process ``pid`` (R, S, T for stopped, Z...), None once it is gone."""
    found = _stat(pid)
    return found[0] if found else None


def children_of(parent, state=None):
    """Pids of the processes whose parent is ``parent`` (only those in ``state`` if given)."""
    found = []
    for name in os.listdir("/proc"):
        stat = _stat(name) if name.isdigit() else None
        if stat is not None and stat[1] == parent and state in (None, stat[0]):
            found.append(int(name))
    return found


def parent_of(pid):
    """The parent pid of process ``pid``, None once it is gone."""
    found = _stat(pid)
    return found[1] if found else None


def resident_agents(state_prefix):
    """Pids of the resident agents whose state directory starts with ``state_prefix``.

    An agent and its guardian (its parent) run the same program with the same arguments, the last one its state
    directory (``python -I -S - DIR`` locally, ``python resident-V.py DIR`` on an SSH host): the agents are the
    matches whose parent is a match without one. A payload the agent has just started shows the agent's command
    line until it execs: its parent is an agent, not a guardian.
    """
    prefix = os.fsencode(state_prefix)
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
        except OSError:
            continue
        if len(args) >= 3 and (args[-3] == b"-" or args[-3].endswith(b".py")) and args[-2].startswith(prefix):
            found[int(name)] = parent_of(int(name))
    guardians = {pid for pid, parent in found.items() if parent not in found}
    return [pid for pid, parent in found.items() if parent in guardians]


def zombie_children():
    """Pids of this process's children that have exited and were never reaped."""
    return children_of(os.getpid(), "Z")


def make_fifo(path):
    os.mkfifo(path)
    return str(path)


def _writer(fifo):
    """``[fd]``: a write end of ``fifo``, once a payload has opened it for reading; None before (ENXIO)."""
    try:
        return [os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)]
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        return None


def release(fifo, timeout=PATIENCE):
    """Write a line into ``fifo`` once a payload has opened it for reading; returns the write time."""
    [fd] = wait_for(lambda: _writer(fifo), deadline=timeout, interval=POLL, what="a payload to open the FIFO")
    try:
        now = time.perf_counter()
        os.write(fd, b"go\n")
    finally:
        os.close(fd)
    return now


def release_unless(fifo, ended, timeout=PATIENCE):
    """Release the payload waiting on ``fifo``, unless ``ended()`` says its attempt ended first (killed)."""
    opened = wait_for(lambda: "ended" if ended() else _writer(fifo), deadline=timeout, interval=POLL,
                      what="a payload to open the FIFO or to end")
    if opened == "ended":
        return
    [fd] = opened
    try:
        os.write(fd, b"go\n")
    except BrokenPipeError:
        pass  # killed at this very moment
    finally:
        os.close(fd)


def busy_wait(seconds):
    """Spin for ``seconds`` (a sleep wakes far too late to aim at a payload's end within microseconds)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
