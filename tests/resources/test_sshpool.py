"""The SSH pool against the real test sshd: strict host keys, authentication, bounded channels, timeouts,
reconnects, large outputs, SFTP."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from broker.errors import ResourceError
from broker.resources.catalogue import SshAccess
from broker.resources.shell import ShellError
from broker.resources.sshpool import SshPool
from tests.fixtures import wait_for
from tests.resources.helpers import account, server_connections, ssh_host


@pytest.fixture
def pool():
    it = SshPool(max_channels=4, connect_timeout=5.0, command_timeout=20.0)
    yield it
    it.close()


@pytest.fixture
def host(sshd):
    return ssh_host(sshd, "unused")


def other_key(tmp_path: Path) -> Path:
    """A fresh ed25519 key pair that neither the server nor its users know."""
    path = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def test_a_command_gives_its_exit_code_stdout_and_stderr(pool, sshd, host):
    done = pool.shell(host, account(sshd, host)).run("read x; echo \"out:$x\"; echo err >&2; exit 7",
                                                     stdin=b"in\n")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out:in\n", b"err\n")


def test_a_command_that_ends_without_reading_its_input_gives_its_exit_status_not_a_link_error(pool, sshd, host):
    # e.g. a missing interpreter: the command is gone while its stdin is still being sent
    shell = pool.shell(host, account(sshd, host))
    done = shell.run("echo 'no such python' >&2; exit 127", stdin=b"x" * 8_000_000)
    assert (done.returncode, done.stderr) == (127, b"no such python\n")
    assert shell.run("echo still").stdout == b"still\n"  # the connection was not dropped


def test_large_stdout_and_stderr_at_once_do_not_deadlock(pool, sshd, host):
    done = pool.shell(host, account(sshd, host)).run(
        "head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2")
    assert (len(done.stdout), len(done.stderr)) == (3_000_000, 3_000_000)


def test_a_host_key_missing_from_known_hosts_is_refused(pool, sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    host = ssh_host(sshd, "unused", known_hosts=str(empty))
    with pytest.raises(ShellError) as caught:
        pool.shell(host, account(sshd, host)).run("true")
    assert str(caught.value) == (f"{sshd.user}@sshtest: {sshd.host}:{sshd.port} is not in {empty}: refused")
    assert caught.value.retryable is False


def test_a_changed_host_key_is_refused(pool, sshd, tmp_path):
    forged = tmp_path / "known_hosts"
    public = (other_key(tmp_path).with_suffix(".pub")).read_text().split()[:2]
    forged.write_text(f"[{sshd.host}]:{sshd.port} {' '.join(public)}\n")
    host = ssh_host(sshd, "unused", known_hosts=str(forged))
    with pytest.raises(ShellError, match=r"the host key of .* does not match .*: refused") as caught:
        pool.shell(host, account(sshd, host)).run("true")
    assert caught.value.retryable is False


def test_a_key_the_account_does_not_accept_is_refused(pool, sshd, host, tmp_path):
    wrong = dataclasses.replace(account(sshd, host), key=str(other_key(tmp_path)))
    with pytest.raises(ShellError, match="authentication refused") as caught:
        pool.shell(host, wrong).run("true")
    assert caught.value.retryable is False


def test_a_missing_key_file_is_named(pool, sshd, host, tmp_path):
    missing = dataclasses.replace(account(sshd, host), key=str(tmp_path / "nope"))
    with pytest.raises(ShellError, match=f"SSH key {tmp_path / 'nope'} does not exist"):
        pool.shell(host, missing).run("true")


def test_a_port_where_nothing_listens_is_a_retryable_error(pool, sshd):
    host = dataclasses.replace(ssh_host(sshd, "unused"), ssh=SshAccess(sshd.host, 1, str(sshd.known_hosts)))
    with pytest.raises(ShellError, match="cannot connect to 127.0.0.1:1: Unable to connect to port 1") as caught:
        pool.shell(host, account(sshd, host)).run("true")
    assert caught.value.retryable is True


def test_a_command_past_its_timeout_is_ambiguous_and_the_connection_stays_usable(sshd, host):
    pool = SshPool(command_timeout=0.5)
    try:
        shell = pool.shell(host, account(sshd, host))
        started = time.monotonic()
        with pytest.raises(ShellError, match="command timed out after 0.5 s") as caught:
            shell.run("sleep 5")
        assert caught.value.ambiguous and time.monotonic() - started < 3
        assert shell.run("echo again").stdout == b"again\n"
        assert pool.opened() == 1
    finally:
        pool.close()


@pytest.mark.slow
def test_concurrent_commands_never_exceed_the_channel_bound(sshd, host, tmp_path):
    pool = SshPool(max_channels=2)
    log = f"/tmp/broker-pool-{os.getpid()}-{time.monotonic_ns()}.log"
    try:
        shell = pool.shell(host, account(sshd, host))
        command = f"echo +1 >> {log}; sleep 0.3; echo -1 >> {log}"
        threads = [threading.Thread(target=shell.run, args=(command,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        running, peak = 0, 0
        for line in Path(log).read_text().split():
            running += int(line)
            peak = max(peak, running)
        assert peak == 2 and pool.opened() == 1
    finally:
        pool.close()
        Path(log).unlink(missing_ok=True)


def _sshd_pids_serving(port: int, client_port: str) -> set[int]:
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=True).stdout
    pids = set()
    for line in out.splitlines():
        fields = line.split()
        if fields[3].rsplit(":", 1)[1] == client_port:
            pids.update(int(p.split("=")[1]) for p in " ".join(fields[4:]).replace(")", ",").split(",")
                        if p.startswith("pid="))
    return pids


def test_a_dropped_connection_is_replaced_on_next_use(pool, sshd, host):
    shell = pool.shell(host, account(sshd, host))
    assert shell.run("echo one").stdout == b"one\n"
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{sshd.port} )"], capture_output=True,
                         text=True, check=True).stdout
    client_port = next(line.split()[2].rsplit(":", 1)[1] for line in out.splitlines()
                       if f"pid={os.getpid()}," in line)
    for pid in _sshd_pids_serving(sshd.port, client_port):
        # the server side of our connection dies (its other sshd process may already be gone with the first)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server_connections(sshd.port) == 0, what="the connection to be gone")
    assert shell.run("echo two").stdout == b"two\n"
    assert pool.opened() == 2 and server_connections(sshd.port) == 1


def test_sftp_writes_atomically_and_refuses_to_download_a_symlink(pool, sshd, host, tmp_path):
    shell = pool.shell(host, account(sshd, host))
    home = f"/home/{sshd.user}"
    shell.put(f"{home}/pool-put.txt", b"data", 0o600)
    assert shell.run(f"stat -c %a {home}/pool-put.txt; cat {home}/pool-put.txt").stdout == b"600\ndata"
    shell.run(f"ln -sf /etc/hostname {home}/pool-link")
    with pytest.raises(ResourceError, match="is not a regular file: refused"):
        shell.download(f"{home}/pool-link", str(tmp_path / "x"), 1024)
    with pytest.raises(ResourceError, match="over the staging limit of 2"):
        shell.download(f"{home}/pool-put.txt", str(tmp_path / "x"), 2)
    assert not (tmp_path / "x").exists()
    shell.run(f"rm -f {home}/pool-put.txt {home}/pool-link")


class _ClosedWithoutEof:
    """A channel as paramiko showed it in a burst of short commands: exit status and close received, no EOF."""

    def __init__(self):
        self._read_end, self._write_end = os.pipe()
        os.write(self._write_end, b"x")  # paramiko's pipe stays readable once the channel is closed
        self.eof_received, self.closed = False, True
        self.status_event = threading.Event()
        self.status_event.set()

    def fileno(self):
        return self._read_end

    def recv_ready(self):
        return False

    def recv_stderr_ready(self):
        return False

    def recv_exit_status(self):
        return 0

    def close(self):
        os.close(self._read_end)
        os.close(self._write_end)


def test_a_command_whose_channel_closed_without_an_eof_ends_at_once_not_at_its_timeout():
    from broker.resources.sshpool import SshShell

    shell = SshShell.__new__(SshShell)
    shell.label = "test"
    channel = _ClosedWithoutEof()
    try:
        started = time.monotonic()
        done = shell._read(channel, time.monotonic() + 30.0, 30.0)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
        assert time.monotonic() - started < 10.0  # it used to wait the whole 30 s, then raise "timed out"
    finally:
        channel.close()


@pytest.mark.slow
def test_thousands_of_short_commands_eight_at_once_never_drop_the_connection(sshd, host):
    # A command that ends at once races our EOF against the server's CLOSE; paramiko sent the EOF after its
    # own CLOSE, and OpenSSH then dropped the connection with every command on it (4 in 3,000 here).
    pool = SshPool(max_channels=8, command_timeout=20.0)
    shell = pool.shell(host, account(sshd, host))
    failures = []

    def one(i: int) -> None:
        try:
            if i % 2:
                done = shell.run("true")
                ok = done.returncode == 0
            else:
                done = shell.run("cat", stdin=b"x%d" % i)
                ok = (done.returncode, done.out) == (0, "x%d" % i)
            if not ok:
                failures.append(done)
        except ShellError as exc:
            failures.append(exc)

    try:
        with concurrent.futures.ThreadPoolExecutor(8) as workers:
            list(workers.map(one, range(3000)))
    finally:
        pool.close()
    assert failures == []
