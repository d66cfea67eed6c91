"""The STOMP 1.2 publisher (stomp.py): transactions per window, a receipt per COMMIT, heart-beats.

No ``content-length`` header is sent, so ActiveMQ hands Java consumers a TextMessage (the body never
contains NUL: see broker.events.document). The connection is tuned for a stream of small frames
(TCP_NODELAY), and a send the bus does not read (ActiveMQ producer flow control) fails after the receipt
timeout instead of blocking the relay for ever (SO_SNDTIMEO; the socket stays blocking for stomp.py's
receiver thread). stomp.py's own reconnection is off: the relay retries with its own backoff.

A window (BEGIN, its SENDs, COMMIT) is encoded here and written with one ``sendall`` at the COMMIT, or two
when the relay flushes its SENDs ahead of the COMMIT: the frames are the ones stomp.py would write (STOMP
1.2 header escaping, headers sorted), without its per-frame listener calls, locking and system call, which
cost more than the bus's own work after an outage (measured: tests/perf/bench_outage.py). The bus delivers
nothing of a window before its COMMIT, so a window that fails to encode or to be written was not delivered.

Over TLS (``stomp+ssl://``) stomp.py verifies the bus's certificate and host name with the configured CAs.
When it cannot connect it only says so; the publisher then makes one handshake of its own to say why
(certificate not trusted, name mismatch...), which is what an operator needs to fix it.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

import stomp

from broker.config import EventsSettings
from broker.errors import ConfigError
from broker.events.publishers import BusError, Confirmations, Message

#: seconds a clean DISCONNECT may wait for the bus's receipt before the socket is simply closed
DISCONNECT_WAIT = 1.0
_DISCONNECT_RECEIPT = "relay-disconnect"
_CLOSED = "the bus closed the connection"


class _Answers:
    """stomp.py listener: receipts, ERROR frames and connection failures, for the relay thread to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connected = False
        self.received: set[str] = set()
        self.rejected: dict[str, str] = {}
        self.errors: list[str] = []
        self.failure: str | None = None

    def on_connected(self, frame: Any) -> None:
        with self.cond:
            self.connected = True
            self.cond.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.received.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_error(self, frame: Any) -> None:
        lines = (frame.body or "").strip().splitlines()
        message = frame.headers.get("message") or (lines[0] if lines else "ERROR frame")
        with self.cond:
            receipt = frame.headers.get("receipt-id")
            if not self.connected:
                self.failure = f"the bus answered ERROR: {message}"
            elif receipt:
                self.rejected[receipt] = message
            else:
                self.errors.append(message)
            self.cond.notify_all()

    def on_disconnected(self) -> None:
        with self.cond:
            self.failure = self.failure or _CLOSED
            self.connected = False
            self.cond.notify_all()

    def on_heartbeat_timeout(self) -> None:
        with self.cond:
            # stomp.py closes the socket first: the heart-beat is the real reason, not the close
            if self.failure in (None, _CLOSED):
                self.failure = "no heart-beat from the bus"
            self.cond.notify_all()


class StompPublisher:
    """A publisher over STOMP 1.2."""

    def __init__(self, hosts: list[tuple[str, int]], settings: EventsSettings, *, tls: bool = False):
        """``tls``: STOMP over TLS (``stomp+ssl://``); raises ConfigError for a TLS file that cannot be read."""
        self.hosts = hosts
        self.settings = settings
        self.tls = tls
        self._conn: Any = None
        self._answers = _Answers()
        #: the encoded frames of the open window, written at its COMMIT
        self._window: list[bytes] = []
        if tls:
            for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
                path = getattr(settings, name)
                if path and not os.access(path, os.R_OK):
                    raise ConfigError(f"[events] {name}: cannot read {path}")

    def connect(self, timeout: float) -> None:
        self.close()
        heartbeat_ms = int(self.settings.heartbeat * 1000)
        conn = stomp.Connection12(
            self.hosts, heartbeats=(heartbeat_ms, heartbeat_ms), auto_content_length=False,
            vhost=self.settings.vhost or None, timeout=max(timeout, 0.1),
            # one try per host: the relay backs off and retries itself, without blocking its actor
            reconnect_attempts_max=1, reconnect_sleep_initial=0.0, reconnect_sleep_increase=0.0,
            reconnect_sleep_jitter=0.0, try_loopback_connect=False)
        if self.tls:
            conn.set_ssl(for_hosts=self.hosts, ca_certs=self.settings.ssl_ca_file or None,
                         cert_file=self.settings.ssl_cert_file or None, key_file=self.settings.ssl_key_file or None)
        answers = _Answers()
        conn.set_listener("relay", answers)
        self._conn, self._answers = conn, answers
        deadline = time.monotonic() + timeout
        try:
            conn.transport.start()
            _tune(conn.transport.socket, self.settings.receipt_timeout)
            # the protocol half of Connection12.connect (its transport half ran above, then the tuning)
            stomp.protocol.Protocol12.connect(conn, self.settings.login or None, self.settings.passcode or None,
                                              wait=False)
        except Exception as exc:
            self.close()
            reason = (_tls_problem(self.hosts, self.settings, timeout) if self.tls else None) or _describe(exc)
            raise BusError(f"cannot connect to {_where(self.hosts)}: {reason}") from None
        with answers.cond:
            answers.cond.wait_for(lambda: answers.connected or answers.failure is not None,
                                  max(0.0, deadline - time.monotonic()))
            ok, failure = answers.connected and answers.failure is None, answers.failure
        if not ok:
            self.close()
            raise BusError(f"cannot connect to {_where(self.hosts)}: {failure or 'no CONNECTED frame in time'}")

    def connected(self) -> bool:
        answers = self._answers
        with answers.cond:
            return self._conn is not None and answers.connected and answers.failure is None

    def reachable(self, timeout: float) -> bool:
        """Whether one of the hosts accepts a TCP connection (closed at once: no STOMP, no TLS handshake)."""
        for host, port in self.hosts:
            try:
                with socket.create_connection((host, port), timeout=max(timeout, 0.05)):
                    return True
            except OSError:
                continue
        return False

    def begin(self, transaction: str) -> None:
        if self._conn is None:
            raise BusError("not connected")
        self._window = [_encode("BEGIN", {"transaction": transaction})]

    def send(self, message: Message, transaction: str) -> None:
        headers = {**message.headers, "destination": message.destination, "transaction": transaction}
        self._window.append(_encode("SEND", headers, message.body))

    def flush(self, transaction: str) -> None:
        frames, self._window = self._window, []
        self._frame(lambda conn: conn.transport.send(b"".join(frames)))

    def commit(self, transaction: str, receipt: str) -> None:
        frames, self._window = self._window, []
        frames.append(_encode("COMMIT", {"transaction": transaction, "receipt": receipt}))
        self._frame(lambda conn: conn.transport.send(b"".join(frames)))

    def _frame(self, write: Any) -> None:
        if self._conn is None:
            raise BusError("not connected")
        try:
            write(self._conn)
        except Exception as exc:  # a dead socket, or a send blocked longer than the send timeout
            with self._answers.cond:
                self._answers.failure = self._answers.failure or f"sending failed: {_describe(exc)}"
            raise BusError(f"sending to {_where(self.hosts)} failed: {_describe(exc)}") from None

    def wait(self, receipts: Sequence[str], timeout: float) -> Confirmations:
        answers = self._answers
        wanted = set(receipts)
        with answers.cond:
            answers.cond.wait_for(
                lambda: answers.failure is not None or wanted <= (answers.received | answers.rejected.keys()),
                timeout)
            received = frozenset(wanted & answers.received)
            rejected = {r: answers.rejected.pop(r) for r in wanted if r in answers.rejected}
            answers.received -= wanted
            errors, answers.errors = tuple(answers.errors), []
            failure = answers.failure
        if failure is None and len(received) + len(rejected) < len(wanted):
            failure = f"no receipt within {timeout:g} s"
        return Confirmations(received, rejected, errors, failure)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        answers = self._answers
        try:
            if answers.connected and answers.failure is None:
                # a polite DISCONNECT, so the bus logs no broken connection
                stomp.protocol.Protocol12.disconnect(conn, receipt=_DISCONNECT_RECEIPT)
                with answers.cond:
                    answers.cond.wait_for(lambda: _DISCONNECT_RECEIPT in answers.received or not answers.connected,
                                          DISCONNECT_WAIT)
        except Exception:  # the bus is gone already: nothing to be polite to
            pass
        for step in (conn.transport.disconnect_socket, conn.transport.stop):
            try:
                step()
            except Exception:
                pass


def _escape(value: str) -> str:
    """A STOMP 1.2 header value (as stomp.py's Protocol12 escapes it)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace(":", "\\c").replace("\r", "\\r")


def _encode(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One STOMP 1.2 frame; no content-length, so ActiveMQ makes a TextMessage (bodies never contain NUL)."""
    lines = "".join(f"{name}:{_escape(value)}\n" for name, value in sorted(headers.items()))
    return f"{command}\n{lines}\n".encode() + body + b"\x00"


def _tune(sock: Any, send_timeout: float) -> None:
    """No Nagle delay on small frames, and a bound on a send the bus does not read (flow control)."""
    if sock is None:
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if send_timeout > 0:
        seconds = int(send_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", seconds, int((send_timeout - seconds) * 1_000_000)))


def _tls_problem(hosts: list[tuple[str, int]], settings: EventsSettings, timeout: float) -> str | None:
    """Why TLS connections to the bus fail, from handshakes of our own (set up as stomp.py sets up its own);
    None when a handshake succeeds or no host is reachable at all (not a TLS problem)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the host name
    problems = []
    try:
        if settings.ssl_ca_file:
            context.load_verify_locations(settings.ssl_ca_file)
        else:
            context.load_default_certs()
        if settings.ssl_cert_file:
            context.load_cert_chain(settings.ssl_cert_file, settings.ssl_key_file or None)
    except (OSError, ssl.SSLError) as exc:
        return f"TLS: cannot use the configured certificates: {exc}"
    for host, port in hosts:
        try:
            with socket.create_connection((host, port), max(timeout, 0.1)) as raw, \
                    context.wrap_socket(raw, server_hostname=host):
                return None
        except ssl.SSLCertVerificationError as exc:
            problems.append(f"TLS: the bus's certificate is not accepted: {exc.verify_message}"
                            + ("" if settings.ssl_ca_file else " ([events] ssl_ca_file is empty: the system's CAs "
                               "were used)"))
        except ssl.SSLError as exc:
            problems.append(f"TLS handshake failed: {exc.reason or exc}")
        except OSError:
            continue
    return "; ".join(dict.fromkeys(problems)) or None


def _describe(exc: BaseException) -> str:
    """A readable reason; stomp.py's own exceptions carry no message."""
    if isinstance(exc, stomp.exception.ConnectFailedException):
        return "connection refused, or no answer within the connect timeout"
    if isinstance(exc, (stomp.exception.NotConnectedException, BrokenPipeError, ConnectionResetError)):
        return "the connection is closed"
    if isinstance(exc, (BlockingIOError, TimeoutError)):
        return "the bus does not read what is sent (flow control?) within the receipt timeout"
    return str(exc) or type(exc).__name__


def _where(hosts: list[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{p}" for h, p in hosts)
