"""A long-lived command on the pooled SSH connection, spoken to in lines: the host agent's relay.

A launch over SSH is otherwise one command, so one process start on the host, per attempt. A stream keeps
one command running on a channel of its own (it holds one of the connection's channel slots while open) and
exchanges one line each way per request. Whatever goes wrong on it (the channel or the connection closes,
no whole line within the timeout) closes the stream and raises :class:`ShellError` with ``ambiguous`` set
once a request has been sent: the host may have acted on it. The next request opens a new stream.
"""

from __future__ import annotations

import select
import time
from typing import Any

from broker.resources.shell import MAX_OUTPUT_BYTES, ShellError

#: paramiko errors that mean the channel or the connection failed
_LINK_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)


class SshStream:
    """One command on one channel: :meth:`request` sends a line and reads the reply line."""

    def __init__(self, connection: Any, command: str, timeout: float):
        import paramiko

        self.label = connection.label
        self._conn, self._timeout, self._buffer = connection, timeout, b""
        self._errors = _LINK_ERRORS + (paramiko.SSHException,)
        if connection.max_channels < 2:  # it would hold the only slot: every other command would wait for it
            raise ShellError(f"{self.label}: one SSH channel at most ([hosts] ssh_max_channels): no room for a "
                             "stream", retryable=False)
        connection.take_slot(timeout)
        try:
            self._transport, self._channel = connection.open_channel(timeout)
            try:
                self._channel.exec_command(command)
            except self._errors as exc:
                self._channel.close()
                raise ShellError(f"{self.label}: cannot start {command.split()[0]}: {exc}") from None
        except BaseException:
            connection.give_slot()
            raise
        self.closed = False

    def request(self, line: bytes) -> bytes:
        """Send ``line`` (one line, without its newline) and return the reply line (without its newline)."""
        if self.closed:
            raise ShellError(f"{self.label}: the stream is closed")
        try:
            self._channel.sendall(line + b"\n")
        except self._errors as exc:
            self.close()
            raise ShellError(f"{self.label}: the stream failed while sending: {exc}", ambiguous=True) from None
        deadline = time.monotonic() + self._timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._buffer) > MAX_OUTPUT_BYTES:
                self.close()
                raise ShellError(f"{self.label}: no reply on the stream within {self._timeout:g} s", ambiguous=True)
            if not self._channel.recv_ready():
                if self._channel.closed or self._channel.eof_received:
                    self.close()
                    raise ShellError(f"{self.label}: the stream's command ended", ambiguous=True)
                select.select([self._channel], [], [], remaining)
                continue
            try:
                self._buffer += self._channel.recv(65536)
            except self._errors as exc:
                self.close()
                raise ShellError(f"{self.label}: the stream failed while reading: {exc}", ambiguous=True) from None
        reply, _, self._buffer = self._buffer.partition(b"\n")
        return reply

    def close(self) -> None:
        """Close the channel (its command sees the end of its input) and give its slot back; idempotent."""
        if not self.closed:
            self.closed = True
            try:
                self._channel.close()
            finally:
                self._conn.give_slot()
