"""A long-lived command on the pooled SSH connection, spoken to in JSON lines: the host agent's relay.

A launch over SSH is otherwise one command, so one process start on the host, per attempt. A stream keeps
one command running on a channel of its own (it holds one of the connection's channel slots while open): a
request is one JSON object a line carrying a ``seq``, answered by the line carrying the same ``seq``; any
other line the command prints is an event, handed to ``on_event`` from the stream's reader thread (the relay
tells of attempts that ended). Whatever goes wrong (the channel or the connection closes, no answer within
the timeout) closes the stream and raises :class:`ShellError`, with ``ambiguous`` set once the request was
sent: the host may have acted on it. The next request opens a new stream.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from broker.resources.shell import MAX_OUTPUT_BYTES, ShellError

log = logging.getLogger(__name__)


class SshStream:
    """One command on one channel: :meth:`request` sends an object and returns the answer."""

    def __init__(self, connection: Any, command: str, timeout: float,
                 on_event: Callable[[dict[str, Any]], None] | None = None):
        import paramiko

        self.label = connection.label
        self._conn, self._timeout, self._on_event = connection, timeout, on_event
        self._errors = (OSError, EOFError, paramiko.SSHException)
        self._seq = itertools.count(1)
        self._answers: dict[int, Any] = {}
        self._cond = threading.Condition()
        self.closed = True
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
        threading.Thread(target=self._read, name=f"stream-{self.label}", daemon=True).start()

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` (a ``seq`` is added) and return the object answering it."""
        seq = next(self._seq)
        line = json.dumps(dict(message, seq=seq), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with self._cond:
            if self.closed:
                raise ShellError(f"{self.label}: the stream is closed")
            self._answers[seq] = None
        try:
            self._channel.sendall(line + b"\n")
        except self._errors as exc:
            self.close()
            raise ShellError(f"{self.label}: the stream failed while sending: {exc}", ambiguous=True) from None
        with self._cond:
            self._cond.wait_for(lambda: self._answers.get(seq) is not None or self.closed, self._timeout)
            answer, ended = self._answers.pop(seq, None), self.closed
        if answer is None:
            self.close()
            why = "the stream's command ended" if ended else f"no answer on the stream within {self._timeout:g} s"
            raise ShellError(f"{self.label}: {why}", ambiguous=True)
        return answer

    def _read(self) -> None:
        """The reader thread: answers to their requests, everything else to ``on_event``, until the end."""
        buffer = b""
        while True:
            try:
                data = self._channel.recv(65536)
            except self._errors:
                data = b""
            if not data or len(buffer) > MAX_OUTPUT_BYTES:
                break
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # not the relay's (a login script's noise): never an answer
                if not isinstance(message, dict):
                    continue
                with self._cond:
                    if message.get("seq") in self._answers:
                        self._answers[message.pop("seq")] = message
                        self._cond.notify_all()
                        continue
                if self._on_event is not None:
                    try:
                        self._on_event(message)
                    except Exception:  # a listener's fault must not stop the answers
                        log.exception("%s: a stream event's listener failed", self.label)
        self.close()

    def close(self) -> None:
        """Close the channel (its command sees the end of its input) and give its slot back; idempotent."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        try:
            self._channel.close()
        finally:
            self._conn.give_slot()
