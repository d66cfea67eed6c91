"""The HTTP/1.1 server of ``broker serve``: requests are read whole before a request thread sees them.

With a thread per connection (cheroot's model) ten clients sending a byte every few seconds held every
request thread. Here one intake thread reads every connection without blocking and hands a request to one of
``[api] threads`` request threads only once it has fully arrived: a slow or idle connection costs a socket
and a buffer, never a thread. The intake thread enforces (each refusal one WARNING line, never a traceback):

* ``[api] header_timeout`` for the request line and fields, from the connection's opening or its previous
  answer (408; an idle connection that sent nothing is closed quietly), and ``[api] min_body_rate`` for
  the body, averaged from the end of the head after a first ``header_timeout`` (408);
* ``[api] max_pending_per_address``: connections from one address without a complete request (keep-alive
  connections between requests do not count); one more is answered 429;
* a memory budget of :data:`BUDGET_REQUESTS` largest requests for bodies being received or waiting: a body
  that does not fit waits, unread and with its clock stopped; :data:`MAX_CONNECTIONS` at most (beyond it,
  new connections wait in the kernel's backlog).

Request threads take whole requests in turns by client (:mod:`broker.api.turns`) and write the answers
(:mod:`broker.api.answer`); refusals are SOAP 1.1 faults.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import resource
import selectors
import socket
import threading
import time
from typing import Any

from broker import memory
from broker.api.answer import App, Connection, Limits, answer, head
from broker.api.faults import FaultSpec, envelope
from broker.api.intake import HttpError, Intake, Request
from broker.api.turns import Turns, client_key

log = logging.getLogger("broker.api")

#: most open connections (also bounded by half the process's file limit)
MAX_CONNECTIONS = 1000
#: bodies in memory at once, in largest requests ([api] max_request_bytes)
BUDGET_REQUESTS = 4
#: seconds between two looks at the deadlines
TICK = 0.25
#: seconds a closing connection is read from (bytes dropped) so its client gets the answer, not a reset
LINGER = 2.0
#: seconds between two warnings about the same address's refused connections
WARN_EVERY = 10.0
#: bytes read from a socket at a time
RECV_BYTES = 256 * 1024
#: the namespace of the faults the server writes itself (the request was never routed)
FAULT_NAMESPACE = "urn:workflow-broker:core:v1"


class HttpServer:
    """Accepts connections, reads whole requests, runs the WSGI application in ``threads`` threads."""

    def __init__(self, bind: tuple[str, int], app: App, threads: int, limits: Limits, reuse_port: bool = False):
        self.bind, self.app, self.threads, self.limits = bind, app, threads, limits
        #: SO_REUSEPORT: [api] processes > 1 bind one port, the kernel spreads connections (broker.api.apionly)
        self.reuse_port, self.budget = reuse_port, BUDGET_REQUESTS * (limits.max_body + 1)
        self.bind_addr: tuple[Any, ...] = bind
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._returned: collections.deque[tuple[Connection, bool]] = collections.deque()
        # taken in turns by client, one client holding at most half the threads (broker.api.turns)
        self._work: Turns[tuple[Connection, Request]] = Turns(per_key=max(1, threads // 2))
        self._connections: set[Connection] = set()
        self._pending: collections.Counter[str] = collections.Counter()
        self._waiting: collections.deque[Connection] = collections.deque()
        self._used = 0
        self._warned: dict[tuple[str, str], float] = {}
        self._accepting = True
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else \
            max(16, min(MAX_CONNECTIONS, soft // 2))

    # ------------------------------------------------------------------------------------ life cycle

    def prepare(self) -> None:
        """Bind and listen (with port 0, ``bind_addr`` then has the real port)."""
        family = socket.AF_INET6 if ":" in self.bind[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(self.bind)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.bind_addr = listener.getsockname()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._wake_r.setblocking(False)

    def serve(self) -> None:
        """Start the request threads and run the intake loop until :meth:`stop`, then drain (answers in
        progress get drain_timeout)."""
        for index in range(self.threads):
            worker = threading.Thread(target=self._serve_requests, name=f"broker-http-{index}")
            worker.start()
            self._workers.append(worker)
        try:
            while not self._stop.is_set():
                self._turn()
            self._drain()
        finally:
            self._work.stop(len(self._workers))
            for worker in self._workers:
                worker.join(timeout=self.limits.drain_timeout)
            for conn in list(self._connections):
                self._close(conn)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        """Stop accepting; :meth:`serve` returns once the calls in progress are answered (or timed out)."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drain(self) -> None:
        assert self._listener is not None
        if self._accepting:
            self._selector.unregister(self._listener)
        self._listener.close()
        # read what arrived before the stop: such a request is being received, not idle (closing would reset it)
        for key, _ in self._selector.select(0):
            if key.data is not None:
                self._readable(key.data)
        # idle connections go now; a request being received or served gets drain_timeout to be answered
        deadline = time.monotonic() + self.limits.drain_timeout
        while time.monotonic() < deadline:
            for conn in list(self._connections):
                if not conn.busy and (not conn.intake.started or conn.linger_until is not None):
                    self._close(conn)
            if not self._connections:
                return
            self._turn()

    # ---------------------------------------------------------------------------------- intake loop

    def _turn(self) -> None:
        for key, _ in self._selector.select(TICK):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                self._readable(key.data)
        while self._returned:
            self._back(*self._returned.popleft())
        self._deadlines(time.monotonic())

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            if len(self._connections) >= self.max_connections:
                # new connections wait in the kernel's backlog until one of these closes
                self._selector.unregister(self._listener)
                self._accepting = False
                self._warn("connections", "*", f"{len(self._connections)} connections open: new ones wait")
                return
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors...: the next turn tries again
                self._warn("accept", "*", f"cannot accept a connection: {exc.strerror or exc}")
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, peer[0], peer[1], Intake(self.limits.max_body), time.monotonic())
            self._connections.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._count(conn)

    def _count(self, conn: Connection) -> bool:
        """Count ``conn`` as pending for its address, or refuse it (429) when the address has too many."""
        cap = self.limits.max_pending_per_address
        if cap and self._pending[conn.address] >= cap:
            self._warn("pending", conn.address, f"connection from {conn.address} refused: {cap} of its connections "
                                                "have not sent a complete request ([api] max_pending_per_address)")
            self._refuse(conn, "429 Too Many Requests", "Client.LimitExceeded",
                         f"too many connections from {conn.address} have not sent a complete request (at most "
                         f"{cap}): finish or close one first")
            return False
        conn.pending = True
        self._pending[conn.address] += 1
        return True

    def _uncount(self, conn: Connection) -> None:
        if conn.pending:
            conn.pending = False
            self._pending[conn.address] -= 1
            if self._pending[conn.address] <= 0:
                del self._pending[conn.address]

    def _readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if conn.linger_until is not None:
            return  # refused: dropped
        if not conn.intake.started and not conn.pending and not self._count(conn):
            return  # a keep-alive connection starting its next request while its address is at the cap
        conn.intake.feed(data)
        self._advance(conn)

    def _advance(self, conn: Connection) -> None:
        """Move the request on: once its head is complete the body needs a share of the memory budget (else
        the connection waits, unread); once it is complete it goes to a request thread."""
        intake = conn.intake
        try:
            request = intake.take()
        except HttpError as exc:
            self._warn("bad", conn.address, f"request from {conn.address}:{conn.port} refused: {exc}")
            self._refuse(conn, exc.status, "Client.InvalidRequest", str(exc))
            return
        if request is not None:
            if not conn.reserved:  # it came whole in one read: its bytes are here already, count them
                self._admit(conn, len(request.body))
            self._dispatch(conn, request)
        elif intake.in_body and conn.body_since is None:
            need = intake.body_needs()
            if self._waiting or (self._used and self._used + need > self.budget):
                self._selector.unregister(conn.sock)
                self._waiting.append(conn)
            else:
                self._admit(conn, need)

    def _admit(self, conn: Connection, need: int) -> None:
        """Reserve ``need`` bytes of the budget for the body and start its clock."""
        self._used += need
        conn.reserved = need
        conn.body_since, conn.body_start = time.monotonic(), conn.intake.received
        waiting = conn.intake.request
        if waiting is not None and (waiting.header("expect") or "").lower() == "100-continue":
            try:  # the client waits for this before it sends the body (curl does for large ones)
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                pass

    def _release(self, conn: Connection) -> None:
        self._used -= conn.reserved
        conn.reserved = 0
        while self._waiting:
            head = self._waiting[0]
            need = head.intake.body_needs()
            if self._used and self._used + need > self.budget:
                return
            self._waiting.popleft()
            self._selector.register(head.sock, selectors.EVENT_READ, head)
            self._admit(head, need)

    def _dispatch(self, conn: Connection, request: Request) -> None:
        self._uncount(conn)
        conn.busy = True
        conn.body_since = None
        self._selector.unregister(conn.sock)
        self._work.put(client_key(conn.address, request), (conn, request))

    def _back(self, conn: Connection, keep: bool) -> None:
        """A request thread has answered: release the request's memory and read the next one, or close."""
        conn.busy = False
        self._release(conn)
        if conn not in self._connections:
            return
        conn.sock.setblocking(False)
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        if not keep or self._stop.is_set():
            self._linger(conn)  # the client may still be sending (a body too large to read)
            return
        conn.since = time.monotonic()
        if conn.intake.buffer:  # the client sent its next request already (pipelining)
            if self._count(conn):
                self._advance(conn)

    def _deadlines(self, now: float) -> None:
        limits = self.limits
        for conn in list(self._connections):
            if conn.busy or conn in self._waiting:
                continue
            if conn.linger_until is not None:
                if now > conn.linger_until:
                    self._close(conn)
            elif conn.body_since is not None:
                late = now - conn.body_since - limits.header_timeout
                got = conn.intake.received - conn.body_start
                if limits.min_body_rate and late > 0 and got < late * limits.min_body_rate:
                    rate = got / max(now - conn.body_since, 1e-9)
                    self._timed_out(conn, f"request body arriving at {rate:.0f} bytes/s, slower than the "
                                          f"{limits.min_body_rate} bytes/s allowed ([api] min_body_rate)")
            elif now - conn.since > limits.header_timeout:
                if not conn.intake.started:
                    self._close(conn)  # idle: nothing to say
                else:
                    self._timed_out(conn, f"request head not complete after {limits.header_timeout:g} s "
                                          "([api] header_timeout)")

    def _timed_out(self, conn: Connection, why: str) -> None:
        log.warning("connection from %s:%d closed: %s", conn.address, conn.port, why)
        self._refuse(conn, "408 Request Timeout", "Client.InvalidRequest", why)

    # ------------------------------------------------------------------------------ refusing, closing

    def _refuse(self, conn: Connection, status: str, code: str, message: str) -> None:
        """Answer with a fault and close (after reading for LINGER seconds, so the answer is not lost)."""
        self._uncount(conn)
        body = envelope(FaultSpec(code, message), FAULT_NAMESPACE)
        try:
            conn.sock.send(head(status, len(body), close=True) + body)
        except OSError:
            self._close(conn)
            return
        if conn.reserved:
            self._release(conn)
        self._linger(conn)

    def _linger(self, conn: Connection) -> None:
        """Close after the answer: stop writing, then read and drop what the client still sends for up to
        LINGER seconds, so that it gets the answer instead of a reset."""
        self._uncount(conn)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.body_since = None
        conn.linger_until = time.monotonic() + LINGER

    def _close(self, conn: Connection) -> None:
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        self._uncount(conn)
        if conn in self._waiting:
            self._waiting.remove(conn)
        elif not conn.busy:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        if conn.reserved and not conn.busy:
            self._release(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()
        if not self._accepting and not self._stop.is_set() and len(self._connections) < self.max_connections:
            assert self._listener is not None
            self._selector.register(self._listener, selectors.EVENT_READ, None)
            self._accepting = True

    def _warn(self, kind: str, address: str, message: str) -> None:
        """One WARNING per kind and address every WARN_EVERY seconds (a flood must not flood the log)."""
        now = time.monotonic()
        if now - self._warned.get((kind, address), -WARN_EVERY) < WARN_EVERY:
            return
        if len(self._warned) > 10_000:
            self._warned.clear()
        self._warned[kind, address] = now
        log.warning("%s", message)

    # -------------------------------------------------------------------------------- request threads

    def _serve_requests(self) -> None:
        while True:
            taken = self._work.get()
            if taken is None:
                return
            key, (conn, request) = taken
            keep, big = False, len(request.body) >= memory.BIG
            try:
                keep = answer(conn, request, self.app, self.bind_addr, self.limits)
            except OSError as exc:  # the client went away, or did not read the answer in time
                log.warning("answer to %s:%d not delivered: %s", conn.address, conn.port, exc.strerror or exc)
            except Exception:
                log.exception("request from %s:%d failed", conn.address, conn.port)
            self._work.done(key)  # (whatever answer() raised was caught above)
            del taken, request
            self._returned.append((conn, keep))
            self._wake()
            if big:  # its body, trees and copies are garbage now: give the pages back
                memory.trim()


__all__ = ["HttpServer", "Limits"]
