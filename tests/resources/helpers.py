"""Helpers for tests against the real SSH server and SLURM cluster: hosts, accounts, endpoints, requests.

The test user's files are inspected directly: the tests run as root on the machine that is also the SSH
host and the cluster.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

from broker.launchers.base import LaunchRequest
from broker.launchers.remote import Endpoint
from broker.resources.accounts import Account
from broker.resources.catalogue import BatchOptions, Host, SshAccess
from broker.resources.sshpool import SshPool
from tests.fixtures import wait_for

#: the engine-side work root the tests' attempt directories are under (never created: it maps to the host)
LOCAL_ROOT = "/nonexistent/broker-engine-work"
#: seconds to wait for things that involve a real remote command or a SLURM scheduling cycle
PATIENCE = 60.0


def ssh_host(sshd, scratch: str, *, name: str = "sshtest", launcher: str = "ssh", python: str = "python3",
             batch: BatchOptions | None = None, known_hosts: str | None = None, env=()) -> Host:
    """A catalogue host for the test sshd."""
    return Host(name=name, launcher=launcher, ssh=SshAccess(sshd.host, sshd.port, known_hosts or str(sshd.known_hosts)),
                scratch=scratch, python=python, env=tuple(env),
                batch=batch if batch is not None else (BatchOptions() if launcher in ("slurm", "pbs", "moab") else None))


def account(sshd, host: Host, user: str | None = None) -> Account:
    return Account(host=host.name, login=user or sshd.user, key=str(sshd.key))


def endpoint(pool: SshPool, host: Host, acct: Account, local_root: str = LOCAL_ROOT) -> Endpoint:
    return Endpoint(host, acct, pool.shell(host, acct), local_root=local_root)


def unique_workflow() -> str:
    """A made-up workflow global id that no other test uses (work directories never collide)."""
    return "wf-" + uuid.uuid4().hex[:18]


def request(workflow: str, text: str, *, node_id: int = 1, attempt: int = 1, path: str | None = None,
            kind: str = "sh", **fields) -> LaunchRequest:
    """A launch request whose engine-side work directory maps under the host's work root."""
    path = path or f"n{node_id}"
    workdir = f"{LOCAL_ROOT}/{workflow}/{path.replace('[', '@').replace(']', '')}/{attempt}"
    return LaunchRequest(node_id=node_id, attempt=attempt, workflow_global_id=workflow, node_path=path,
                         workdir=workdir, payload_type=kind, payload_text=text, **fields)


class Ended:
    """An exit callback that records which attempts ended."""

    def __init__(self):
        self.keys: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def __call__(self, node_id: int, attempt: int) -> None:
        with self._lock:
            self.keys.add((node_id, attempt))

    def has(self, node_id: int, attempt: int = 1) -> bool:
        with self._lock:
            return (node_id, attempt) in self.keys

    def count(self) -> int:
        with self._lock:
            return len(self.keys)


def run_to_end(launcher, handle, deadline: float = PATIENCE):
    """Watch ``handle`` until it ends, then collect its result."""
    ended = Ended()
    launcher.watch(handle, ended)
    wait_for(lambda: ended.has(handle.node_id, handle.attempt), deadline=deadline,
             what=f"attempt {handle.attempt} of node {handle.node_id} to end")
    return launcher.collect(handle)


def _ss(*args: str) -> list[list[str]]:
    out = subprocess.run(["ss", "-Htn", *args], capture_output=True, text=True, check=True).stdout
    return [line.split() for line in out.splitlines() if line.strip()]


def server_connections(port: int, pid: int | None = None) -> int:
    """ESTABLISHED connections to the local server on ``port``, counted on the server side.

    Only those whose client end belongs to process ``pid`` (default: this one) count, so other
    programs using the same test server cannot disturb the count.
    """
    pid = os.getpid() if pid is None else pid
    # with a state filter, ss prints: Recv-Q Send-Q Local Peer [process]
    ours = {row[2].rsplit(":", 1)[1] for row in _ss("-p", "state", "established", f"( dport = :{port} )")
            if f"pid={pid}," in " ".join(row[4:])}
    served = [row for row in _ss("state", "established", f"( sport = :{port} )")]
    return sum(1 for row in served if row[3].rsplit(":", 1)[1] in ours)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def read_int(path: str | Path) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def release(workdir: str, name: str = "go") -> None:
    """Create ``name`` in a (remote = local here) work directory: payloads that wait for it go on."""
    Path(workdir, name).write_text("go\n")


#: a payload that waits (at most 5 minutes) for a file "go" in its work directory, then prints a report
WAIT_FOR_GO = ('i=0; while [ ! -e "$WB_WORKDIR/go" ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i+1)); done\n'
               "echo '@broker output done=true'\n")


def wait_started(workdir: str, deadline: float = PATIENCE) -> int:
    """Wait until the payload in ``workdir`` has started; returns its process group id."""
    return wait_for(lambda: read_int(os.path.join(workdir, "pid")), deadline=deadline,
                    what=f"the payload in {workdir} to start")


def elapsed(since: float) -> float:
    return time.monotonic() - since
