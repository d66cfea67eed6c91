"""The SSH pool: one connection per (host, account), shared by every node, worker and transfer there.

Each connection (a paramiko Transport) multiplexes its commands and SFTP sessions as channels, at most
``max_channels`` at once (a semaphore; sshd's own ``MaxSessions`` defaults to 10). So the number of SSH
connections follows the number of (host, account) pairs in use, never the number of nodes.

Host keys are checked strictly against the catalogue's known_hosts file (RejectPolicy: an unknown or
changed key is refused, never learned). Connecting, opening a channel and every command have timeouts.
A connection found dead is replaced on next use; a command whose channel could not even be opened is tried
once more on a fresh connection (it cannot have run). A command that failed after it was sent raises
:class:`~broker.resources.shell.ShellError` with ``ambiguous=True``: callers whose command is not idempotent
(``sbatch``) look up what happened instead of running it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any

import paramiko

from broker.atomic import atomic_write
from broker.errors import ResourceError
from broker.resources.accounts import Account
from broker.resources.catalogue import Host
from broker.resources.shell import CHUNK, MAX_OUTPUT_BYTES, Completed, ShellError
from broker.resources.sshstream import SshStream

log = logging.getLogger(__name__)

#: paramiko errors that mean the connection (not the command) failed
_LINK_ERRORS = (paramiko.SSHException, EOFError, OSError)


class _Connection:
    """One SSH connection to one host as one account, with a bound on concurrent channels."""

    def __init__(self, host: Host, account: Account, *, max_channels: int, connect_timeout: float,
                 keepalive: float):
        assert host.ssh is not None
        self.host, self.account = host, account
        self.label = account.label
        self._channels = threading.BoundedSemaphore(max_channels)
        self.max_channels = max_channels
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        #: connections opened so far (1 unless some were lost)
        self.opened = 0
        self.closed = False

    def transport(self) -> paramiko.Transport:
        """The live transport, connecting (or reconnecting) first if needed."""
        with self._lock:
            if self.closed:
                raise ShellError(f"{self.label}: the SSH pool is closed", retryable=False)
            client = self._client
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                client.close()
                self._client = None
            self._client = self._connect()
            self.opened += 1
            transport = self._client.get_transport()
            assert transport is not None
            return transport

    def _connect(self) -> paramiko.SSHClient:
        ssh = self.host.ssh
        assert ssh is not None
        key = self.account.key
        if key is not None and not os.path.isfile(key):
            raise ShellError(f"{self.label}: SSH key {key} does not exist", retryable=False)
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(ssh.known_hosts)
        except OSError as exc:
            raise ShellError(f"{self.label}: cannot read known-hosts file {ssh.known_hosts}: {exc.strerror}",
                             retryable=False) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        timeout = self._connect_timeout
        try:
            client.connect(ssh.address, port=ssh.port, username=self.account.login, key_filename=key,
                           look_for_keys=False, allow_agent=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout, channel_timeout=timeout)
        except paramiko.BadHostKeyException:
            client.close()
            raise ShellError(f"{self.label}: the host key of {ssh.address}:{ssh.port} does not match "
                             f"{ssh.known_hosts}: refused", retryable=False) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise ShellError(f"{self.label}: authentication refused ({exc})", retryable=False) from None
        except paramiko.SSHException as exc:
            client.close()
            unknown = "not found in known_hosts" in str(exc)
            what = (f"{ssh.address}:{ssh.port} is not in {ssh.known_hosts}: refused" if unknown else
                    f"cannot connect to {ssh.address}:{ssh.port}: {exc}")
            raise ShellError(f"{self.label}: {what}", retryable=not unknown) from None
        except (OSError, EOFError) as exc:
            client.close()
            reason = "timed out" if isinstance(exc, socket.timeout) else (getattr(exc, "strerror", None) or exc)
            raise ShellError(f"{self.label}: cannot connect to {ssh.address}:{ssh.port}: {reason}") from None
        transport = client.get_transport()
        assert transport is not None
        # Without TCP_NODELAY every channel open waits out the peer's delayed ACK: 40 ms per command.
        with contextlib.suppress(OSError, AttributeError):
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._keepalive:
            transport.set_keepalive(int(self._keepalive))
        log.debug("connected to %s (%s:%s)", self.label, ssh.address, ssh.port)
        return client

    def drop(self, transport: paramiko.Transport) -> None:
        """Forget ``transport`` if it is still the current one (it failed); the next use reconnects."""
        with self._lock:
            client = self._client
            if client is not None and client.get_transport() is transport:
                client.close()
                self._client = None

    @contextlib.contextmanager
    def slot(self, timeout: float) -> Iterator[None]:
        """Hold one of the connection's channel slots."""
        self.take_slot(timeout)
        try:
            yield
        finally:
            self._channels.release()

    def take_slot(self, timeout: float) -> None:
        """Take one of the channel slots until :meth:`give_slot` (a long-lived channel: a stream)."""
        if not self._channels.acquire(timeout=timeout):
            raise ShellError(f"{self.label}: no free SSH channel after {timeout:g} s")

    def give_slot(self) -> None:  # noqa: D102 - the end of take_slot
        self._channels.release()

    def open_channel(self, timeout: float) -> tuple[paramiko.Transport, paramiko.Channel]:
        """A new session channel, on a fresh connection if the current one turns out dead."""
        for retry in (False, True):
            transport = self.transport()
            try:
                return transport, transport.open_session(timeout=timeout)
            except _LINK_ERRORS as exc:
                self.drop(transport)
                if retry:
                    raise ShellError(f"{self.label}: cannot open an SSH channel: {exc}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self.closed = True
            if self._client is not None:
                self._client.close()
                self._client = None

    def is_open(self) -> bool:
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            return transport is not None and transport.is_active()


def _shutdown_write(channel: paramiko.Channel) -> None:
    """Send the channel's EOF unless it is closed, under the channel's lock.

    paramiko's ``shutdown_write`` builds the EOF under the lock but sends it after releasing it, without
    looking whether the channel was closed meanwhile: a short command's server CLOSE handled in between
    (paramiko answers it with its own CLOSE at once) put our EOF after our CLOSE, and OpenSSH drops the whole
    connection for an EOF on a channel it has freed ("ieof packet referred to nonexistent channel"): every
    command in flight on it failed (4 in 3,000 commands, 8 at once). Under the lock the EOF goes out before
    paramiko's CLOSE (its handler waits for the lock), or not at all (held at most ``clear_to_send_timeout``).
    """
    with channel.lock:
        if channel.closed or channel.eof_sent:
            return
        message = channel._send_eof()
        if message is not None and channel.transport is not None:
            channel.transport._send_user_message(message)


class SshShell:
    """Commands and files on one host as one account, over the pool's shared connection."""

    def __init__(self, connection: _Connection, command_timeout: float):
        self._conn = connection
        self.label = connection.label
        self._timeout = command_timeout

    def stream(self, command: str, on_event: Any = None) -> SshStream:
        """``command`` on a channel of its own, kept open: a :class:`broker.resources.sshstream.SshStream`."""
        return SshStream(self._conn, command, self._timeout, on_event)

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Completed:
        """Run ``command`` by the account's login shell; stdin, if given, is sent and closed."""
        timeout = timeout or self._timeout
        deadline = time.monotonic() + timeout
        with self._conn.slot(timeout):
            transport, channel = self._conn.open_channel(timeout)
            try:
                try:
                    channel.exec_command(command)
                except _LINK_ERRORS as exc:
                    self._conn.drop(transport)
                    raise ShellError(f"{self.label}: the command could not be sent: {exc}", ambiguous=True) \
                        from None
                try:
                    if stdin:
                        try:
                            channel.sendall(stdin)
                        except _LINK_ERRORS:
                            # A command may end without reading all its input (a missing interpreter): the
                            # server then closes the channel after sending the exit status, which says why.
                            if not channel.exit_status_ready():
                                raise
                    _shutdown_write(channel)
                    return self._read(channel, deadline, timeout)
                except _LINK_ERRORS as exc:
                    self._conn.drop(transport)
                    raise ShellError(f"{self.label}: the connection failed during a command: {exc}",
                                     ambiguous=True) from None
            finally:
                channel.close()

    def _read(self, channel: paramiko.Channel, deadline: float, timeout: float) -> Completed:
        out, err = bytearray(), bytearray()
        fd = channel.fileno()  # readable when stdout or stderr data arrives, or at EOF
        while True:
            while channel.recv_ready():
                out += channel.recv(CHUNK)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(CHUNK)
            if len(out) > MAX_OUTPUT_BYTES or len(err) > MAX_OUTPUT_BYTES:
                raise ShellError(f"{self.label}: a command printed over {MAX_OUTPUT_BYTES} bytes",
                                 ambiguous=True, retryable=False)
            remaining = deadline - time.monotonic()
            ended = channel.eof_received or channel.closed
            if ended and not channel.recv_ready() and not channel.recv_stderr_ready():
                # The exit status follows the EOF; the pipe stays readable from now on, so wait on it. A channel
                # can also be seen closed without its EOF ever flagged (a short command in a burst of them:
                # exit status and close came, eof_received stayed 0): without this a finished command waited
                # for its whole timeout and failed as an ambiguous one (tests/perf/bench_ssh.py's baseline).
                if not channel.status_event.wait(max(remaining, 0)):
                    break
                return Completed(channel.recv_exit_status(), bytes(out), bytes(err))
            if remaining <= 0:
                break
            select.select([fd], [], [], remaining)
        raise ShellError(f"{self.label}: command timed out after {timeout:g} s", ambiguous=True)

    @contextlib.contextmanager
    def sftp(self) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session on the shared connection (one channel slot while it is open)."""
        with self._conn.slot(self._timeout):
            transport, channel = self._conn.open_channel(self._timeout)
            try:
                channel.settimeout(self._timeout)
                channel.invoke_subsystem("sftp")
                client = paramiko.SFTPClient(channel)
            except _LINK_ERRORS as exc:
                channel.close()
                self._conn.drop(transport)
                raise ShellError(f"{self.label}: cannot start SFTP: {exc}") from None
            try:
                yield client
            except (paramiko.SSHException, EOFError, socket.timeout) as exc:
                self._conn.drop(transport)
                raise ShellError(f"{self.label}: SFTP failed: {exc}") from None
            finally:
                client.close()

    def put(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``path`` atomically: a temporary name in the same directory, then a POSIX rename."""
        with self.sftp() as sftp:
            try:
                with _remote_atomic_write(sftp, path, mode) as handle:
                    handle.write(data)
            except OSError as exc:
                raise ShellError(f"{self.label}: cannot write {path}: {exc.strerror or exc}",
                                 retryable=False) from None

    def upload(self, local: str, remote: str, max_bytes: int) -> int:
        """Copy local file ``local`` to ``remote`` atomically."""
        try:
            size = os.stat(local).st_size
        except OSError as exc:
            raise ResourceError(f"cannot read {local}: {exc.strerror}", retryable=False) from None
        if size > max_bytes:
            raise ResourceError(f"{local} is {size} bytes, over the staging limit of {max_bytes}",
                                retryable=False)
        with self.sftp() as sftp, open(local, "rb") as src:
            try:
                with _remote_atomic_write(sftp, remote, 0o600) as dst:
                    dst.set_pipelined(True)
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
            except OSError as exc:
                raise ResourceError(f"{self.label}: cannot write {remote}: {exc.strerror or exc}",
                                    retryable=False) from None
        return size

    def download(self, remote: str, local: str, max_bytes: int) -> int:
        """Copy regular file ``remote`` (never a symlink) to ``local`` atomically, at most ``max_bytes``."""
        with self.sftp() as sftp:
            try:
                info = sftp.lstat(remote)
                if stat.S_ISLNK(info.st_mode or 0) or not stat.S_ISREG(info.st_mode or 0):
                    raise ResourceError(f"{self.label}:{remote} is not a regular file: refused", retryable=False)
                if (info.st_size or 0) > max_bytes:
                    raise ResourceError(f"{self.label}:{remote} is {info.st_size} bytes, over the staging "
                                        f"limit of {max_bytes}", retryable=False)
                size = 0
                with sftp.open(remote, "rb") as src, atomic_write(local) as dst:
                    src.prefetch(info.st_size)
                    while chunk := src.read(CHUNK):
                        size += len(chunk)
                        if size > max_bytes:  # it grew while being read
                            raise ResourceError(f"{self.label}:{remote} grew over the staging limit of "
                                                f"{max_bytes} bytes", retryable=False)
                        dst.write(chunk)
            except FileNotFoundError:
                raise ResourceError(f"{self.label}:{remote} does not exist", retryable=False) from None
            except PermissionError:
                raise ResourceError(f"{self.label}:{remote}: permission denied", retryable=False) from None
        return size


@contextlib.contextmanager
def _remote_atomic_write(sftp: paramiko.SFTPClient, path: str, mode: int) -> Iterator[paramiko.SFTPFile]:
    """A remote file (``mode``) to fill with ``path``'s new content: written under a temporary name in the
    same directory, renamed over ``path`` (POSIX rename) when the block ends without an error, else removed."""
    partial = f"{path}.partial.{os.getpid()}.{threading.get_ident()}"
    try:
        with sftp.open(partial, "wb") as handle:
            handle.chmod(mode)
            yield handle
        sftp.posix_rename(partial, path)
    except BaseException:
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            sftp.remove(partial)
        raise


class SshPool:
    """SSH connections by (host, account): created on first use, reused, closed by :meth:`close`."""

    def __init__(self, *, max_channels: int = 8, connect_timeout: float = 10.0, command_timeout: float = 60.0,
                 keepalive: float = 30.0):
        """``max_channels``: concurrent commands and transfers per connection; timeouts in seconds."""
        self._max_channels = max_channels
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._keepalive = keepalive
        self._lock = threading.Lock()
        self._connections: dict[tuple[str, str], _Connection] = {}

    def shell(self, host: Host, account: Account) -> SshShell:
        """The shell of ``account`` on ``host`` (sharing the one connection of that pair)."""
        if host.ssh is None:
            raise ResourceError(f"host '{host.name}' has no <ssh> in the catalogue", retryable=False)
        key = (host.name, account.login)
        with self._lock:
            conn = self._connections.get(key)
            if conn is None or conn.closed:
                conn = _Connection(host, account, max_channels=self._max_channels,
                                   connect_timeout=self._connect_timeout, keepalive=self._keepalive)
                self._connections[key] = conn
        return SshShell(conn, self._command_timeout)

    def open_connections(self) -> int:
        """SSH connections currently open (for tests and metrics)."""
        with self._lock:
            conns = list(self._connections.values())
        return sum(c.is_open() for c in conns)

    def opened(self) -> int:
        """SSH connections opened since the pool was made (reconnects included)."""
        with self._lock:
            return sum(c.opened for c in self._connections.values())

    def close(self) -> None:
        """Close every connection; running remote payloads are not affected (they are detached)."""
        with self._lock:
            conns = list(self._connections.values())
            self._connections.clear()
        for conn in conns:
            conn.close()


__all__ = ["SshPool", "SshShell"]
