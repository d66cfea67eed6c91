"""API-only processes: ``[api] processes = N`` serves one port from N processes.

Process 0 is ``broker serve`` itself: the engine, the writer, the whole API. It binds the service port with
``SO_REUSEPORT`` and, once active, starts N-1 API-only processes (``broker serve --api-only ADDR``, a
fresh interpreter each: no fork of a process that already runs threads), which bind the same port the same
way; the kernel spreads new connections over the N listening sockets. Each API-only process parses,
checks and authenticates every request itself (its own credential cache, so a changed password or a
removed user is seen within ``[api] credential_ttl`` seconds there too) and answers the frequent reads from
the database alone, with its own connections: ``getStatusInfoForId`` (a workflow's progress from the counts
the writer commits in its row) and the event pages. Everything else, writes first (submit, cancel, restart,
deletes, push), is forwarded as it came (body, credentials) to process 0 on a private loopback address and
its answer passed back: one writer stays the rule, and process 0 checks the credentials again. ``/metrics``
is forwarded too (one registry: process 0's). ``/health`` answers ``200 api`` while the database can be read.

Forwarding over loopback needs process 0 on the same machine: API processes on other machines, writing
through request rows the active writer applies, are not part of this change.
"""

from __future__ import annotations

import http.client
import logging
import signal
import threading
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from broker.config import Settings

log = logging.getLogger("broker.api")

CORE_NS, ADMIN_NS = "urn:workflow-broker:core:v1", "urn:workflow-broker:admin:v1"
#: request headers passed on to process 0 (the rest is the edge's business, already checked here)
FORWARDED = ("CONTENT_TYPE", "HTTP_AUTHORIZATION", "HTTP_SOAPACTION")
#: seconds a forwarded call may take (a submit of a large description included)
FORWARD_TIMEOUT = 300.0


class Forward:
    """A WSGI application passing each request to process 0 at ``address`` (one kept connection per thread)."""

    def __init__(self, address: tuple[str, int]):
        self.address = address
        self._local = threading.local()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else None
        headers = {name[5:].replace("_", "-").title() if name.startswith("HTTP_") else "Content-Type": environ[name]
                   for name in FORWARDED if environ.get(name)}
        path = environ.get("PATH_INFO", "/") + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
        for attempt in (1, 2):  # a kept connection process 0 closed meanwhile: once more on a new one
            connection = self._connection()
            try:
                connection.request(environ.get("REQUEST_METHOD", "POST"), path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._local.connection = None
                connection.close()
                if attempt == 2:
                    raise
        kept = [(k, v) for k, v in response.getheaders()
                if k.lower() in ("content-type", "content-length", "www-authenticate", "retry-after", "cache-control")]
        start_response(f"{response.status} {response.reason}", kept)
        return [answer]

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(*self.address, timeout=FORWARD_TIMEOUT)
        return connection


def _wsdl(address: tuple[str, int], path: str) -> bytes:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}?wsdl", timeout=60) as answer:
        return answer.read()


def probe(db: Any) -> Callable[[], bool]:
    """Whether the database can be read now (for ``/health``)."""
    from sqlalchemy import text

    def readable() -> bool:
        try:
            with db.connect() as c:
                c.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.warning("database not readable: %s", exc)
            return False

    return readable


def serve_api_only(settings: Settings, listen: tuple[str, int], target: tuple[str, int]) -> int:
    """Run one API-only process on ``listen`` forwarding to process 0 at ``target``, until SIGTERM (drain as
    ``broker serve`` does); returns the exit status."""
    from broker.api.edge import Edge, Route
    from broker.api.eventpage import OPERATIONS, page_handler
    from broker.api.fastpath import OPERATION, StatusReader, status_handler
    from broker.api.front import Front
    from broker.api.health import Health, ServiceState
    from broker.api.httpd import HttpServer, Limits
    from broker.api.identity import Authenticator
    from broker.api.metrics import registry_for
    from broker.persistence.db import make_engine, session_factory

    api = settings.api
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    db = make_engine(settings.database_url(), settings, pool_size=2 * api.threads + 1)
    forward = Forward(target)
    routes = [Route("/broker", forward, CORE_NS, _wsdl(target, "/broker")),
              Route("/admin", forward, ADMIN_NS, _wsdl(target, "/admin"))]
    fast: dict[tuple[str, str], Any] = {}
    if api.fast_status:
        fast[("/broker", OPERATION)] = _without_estimates(status_handler(StatusReader(db)))
        pages = page_handler(db, api.page_size)
        fast.update({("/broker", operation): pages for operation in OPERATIONS})
    limits = settings.limits
    authenticator = Authenticator(session_factory(db), api.credential_ttl, api.threads)
    edge = Edge(routes, authenticator, api.max_request_bytes, fast,
                max_attributes=(limits.max_attributes_per_element, limits.max_attributes))
    health = Health(ServiceState.API, reachable=probe(db))
    registry, _, api_metrics = registry_for(health)
    front = Front(health, registry, api_metrics, metrics_here=False)
    front.inner = _with_metrics_forwarded(edge, forward)
    server = HttpServer(listen, front, api.threads,
                        Limits(header_timeout=api.header_timeout, min_body_rate=api.min_body_rate,
                               max_pending_per_address=api.max_pending_per_address, max_body=api.max_request_bytes,
                               drain_timeout=api.drain_timeout), reuse_port=True)
    server.prepare()
    thread = threading.Thread(target=server.serve, name="broker-http")
    thread.start()
    log.info("API-only process on %s:%d, forwarding the other calls to %s:%d", *server.bind_addr[:2], *target)
    try:
        while not stopping.wait(0.5):  # timed: a signal handler runs only between bytecodes of this thread
            pass
    finally:
        server.stop()
        thread.join()
        db.dispose()
    return 0


def start_api_processes(settings: Settings, front: Any, limits: Any, listen: str) -> Callable[[], None]:
    """In process 0, once active: start ``[api] processes`` - 1 API-only processes on the service port
    ``listen``, and the loopback server they forward the other calls to (``front``, process 0's application).
    Returns what stops them: the processes (each drains its calls in progress), then the loopback server."""
    import dataclasses
    import os
    import subprocess
    import sys

    from broker.api.httpd import HttpServer

    # forwarded calls all come from loopback: the per-address cap applies in the API-only processes
    private = HttpServer(("127.0.0.1", 0), front, settings.api.threads,
                         dataclasses.replace(limits, max_pending_per_address=0))
    private.prepare()
    thread = threading.Thread(target=private.serve, name="broker-http-forwarded")
    thread.start()
    env = {**os.environ, "BROKER_DATABASE_URL": settings.database_url(), "BROKER_API_LISTEN": listen}
    env.pop("BROKER_CONFIG", None)
    if settings.source:
        env["BROKER_CONFIG"] = settings.source
    command = [sys.executable, "-m", "broker.cli", "serve", "--api-only", f"127.0.0.1:{private.bind_addr[1]}"]
    children = [subprocess.Popen(command, env=env) for _ in range(settings.api.processes - 1)]
    log.info("%d API-only processes on %s (pids %s)", len(children), listen, " ".join(str(c.pid) for c in children))

    def stop() -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=settings.api.drain_timeout + 10)
            except subprocess.TimeoutExpired:
                log.warning("API-only process %d did not stop: killed", child.pid)
                child.kill()
                child.wait()
        private.stop()
        thread.join()

    return stop


def _without_estimates(handler: Any) -> Any:
    """The status handler for calls that ask no estimated end; those that do are forwarded: the estimates'
    cache (and the scheduler's slots they depend on) live in process 0."""
    from broker.api.fastpath import CORE_NS as CORE, OPERATION, SOAP11_ENV

    path = f"{{{SOAP11_ENV}}}Body/{{{CORE}}}{OPERATION}"

    def answer(tree: Any, environ: dict[str, Any]) -> bytes | None:
        call = tree.find(path)
        return None if call is not None and len(call) > 1 else handler(tree, environ)

    return answer


def _with_metrics_forwarded(edge: Any, forward: Forward) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("PATH_INFO", "").rstrip("/") or "/") == "/metrics":
            return forward(environ, start_response)
        return edge(environ, start_response)

    return app


__all__ = ["Forward", "serve_api_only", "start_api_processes"]
