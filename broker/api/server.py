"""``broker serve``: the engine, the two SOAP services on :mod:`broker.api.httpd`, and the SIGTERM drain.

Start: the engine (every workflow: ``track_all`` resumes the unfinished ones), then the HTTP server; the
``on_ready`` callback gets the bound URL once requests are served (the port is the real one when ``[api]
listen`` asks for port 0; ``broker serve`` prints it). SIGTERM or SIGINT drains: the server stops accepting connections,
calls in progress get up to ``[api] drain_timeout`` seconds to finish, then the engine stops its actors
in order (running payloads keep running; the next broker re-attaches to them) and the process exits 0.
A second signal exits at once with status 130.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from broker.config import Settings
from broker.errors import ConfigError

log = logging.getLogger("broker.api")

#: exit status when a second signal forces the exit
FORCED_EXIT = 130
def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port). Raises ConfigError."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[api] listen: invalid address {listen!r} (expected host:port, e.g. 127.0.0.1:8080)")
    return host, int(port)


class Service:
    """The running service: engine, HTTP server, signal handling."""

    def __init__(self, settings: Settings, *, engine_factory: Callable[[Settings], Any] | None = None,
                 on_ready: Callable[[str, str], None] | None = None):
        """``on_ready(bound_url, public_url)`` is called once the server accepts calls."""
        self.settings = settings
        self.engine_factory = engine_factory
        self.on_ready = on_ready
        self.stopping = threading.Event()
        self._signals = 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # only flags here: the main thread does the work
        self._signals += 1
        if self._signals > 1:
            os._exit(FORCED_EXIT)
        self.stopping.set()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status."""
        from broker.api.app import build, quiet_spyne
        from broker.api.context import ApiContext
        from broker.api.edge import Edge, Route
        from broker.api.httpd import HttpServer, Limits
        from broker.api.identity import Authenticator
        from broker.engine import Engine

        api_settings = self.settings.api
        host, port = parse_listen(api_settings.listen)
        if api_settings.threads < 1:
            raise ConfigError(f"[api] threads: must be at least 1, got {api_settings.threads}")
        if api_settings.header_timeout <= 0 or min(api_settings.min_body_rate,
                                                   api_settings.max_pending_per_address) < 0:
            raise ConfigError("[api] header_timeout must be above 0, min_body_rate and max_pending_per_address at "
                              "least 0")
        quiet_spyne()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

        engine = (self.engine_factory or (lambda s: Engine(s, all_workflows=True, service="serve")))(self.settings).start()
        status_db = None
        try:
            resumed = engine.track_all()
            server = HttpServer((host, port), _unavailable, api_settings.threads, Limits(
                header_timeout=api_settings.header_timeout, min_body_rate=api_settings.min_body_rate,
                max_pending_per_address=api_settings.max_pending_per_address,
                max_body=api_settings.max_request_bytes, drain_timeout=api_settings.drain_timeout))
            server.prepare()  # binds: with port 0 the real port is known from here on
            bound_host, bound_port = server.bind_addr[:2]
            public = api_settings.public_url.rstrip("/") or f"http://{_url_host(host)}:{bound_port}"
            # elves on hosts with push="true" report here from now on (attempts started before: files only)
            engine.ctx.push_url = public + "/broker"
            api = ApiContext(self.settings, engine)
            routes = [Route(path, app, namespace, wsdl) for path, (app, namespace, wsdl)
                      in build(api, public, api_settings.max_request_bytes).items()]
            fast = {}
            if api_settings.fast_status:
                from broker.api.fastpath import OPERATION, StatusReader, status_handler
                from broker.persistence.db import make_engine

                # its own pool: each request thread keeps one connection for status reads
                status_db = make_engine(self.settings.database_url(), self.settings,
                                        pool_size=api_settings.threads + 1)
                fast[("/broker", OPERATION)] = status_handler(StatusReader(status_db, engine.progress))
            authenticator = Authenticator(engine.sessions, api_settings.credential_ttl, api_settings.threads)
            limits = self.settings.limits  # one setting caps attributes in descriptions and in envelopes
            server.app = Edge(routes, authenticator, api_settings.max_request_bytes, fast,
                              max_attributes=(limits.max_attributes_per_element, limits.max_attributes))
            thread = threading.Thread(target=server.serve, name="broker-http")
            thread.start()
            log.info("serving IBrokerCore at %s/broker and IBroker at %s/admin (%d workflows resumed)", public,
                     public, len(resumed))
            if self.on_ready is not None:
                self.on_ready(f"http://{_url_host(bound_host)}:{bound_port}", public)
            # a timed wait: the Python-level signal handler runs only when the main thread executes bytecode,
            # and one untimed wait was seen to sleep through a SIGTERM under load
            while not self.stopping.wait(0.5):
                pass
            log.info("stopping: no new connections; waiting up to %g s for calls in progress",
                     api_settings.drain_timeout)
            server.stop()
            thread.join()
        finally:
            if status_db is not None:
                status_db.dispose()
            engine.stop()
        log.info("stopped")
        return 0


def _unavailable(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The WSGI application until the services are built (never reached: nothing is served before)."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        import socket

        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host
