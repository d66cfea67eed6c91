"""``broker serve``: the engine, the two SOAP services on :mod:`broker.api.httpd`, and the SIGTERM drain.

Start: the HTTP server opens its port first, answering ``/health`` with ``starting`` and every call with a
503 fault (:mod:`broker.api.front`); then the engine (every workflow: ``track_all`` resumes the unfinished
ones) and the services, and the state becomes ``active`` (:mod:`broker.api.health`). The ``on_ready``
callback then gets the bound URL (the port is the real one when ``[api] listen`` asks for port 0; ``broker
serve`` prints it). ``[api] metrics_listen`` opens a second, small server for ``/metrics`` alone. SIGTERM or
SIGINT drains: the state becomes ``stopping``, the server stops accepting connections, calls in progress get
up to ``[api] drain_timeout`` seconds to finish, then the engine stops its actors in order (running payloads
keep running; the next broker re-attaches to them) and the process exits 0. A second signal exits at once
with status 130.

On PostgreSQL, while another broker holds the database's lease, the engine is not started: the service waits
as a standby (``/health`` answers ``standby``, every call a 503 fault saying so) and starts the engine, as a
restarted broker does, once that lease is free (:mod:`broker.persistence.standby`).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from broker.api.addresses import operations, parse_listen, url_host as _url_host
from broker.config import Settings
from broker.errors import ConfigError

log = logging.getLogger("broker.api")

#: exit status when a second signal forces the exit
FORCED_EXIT = 130
class Service:
    """The running service: engine, HTTP server, signal handling."""

    def __init__(self, settings: Settings, *, engine_factory: Callable[..., Any] | None = None,
                 on_ready: Callable[[str, str], None] | None = None,
                 on_standby: Callable[[str, str], None] | None = None):
        """``on_ready(bound_url, public_url)`` is called once the server accepts calls; ``on_standby`` when it
        waits as a standby (PostgreSQL: another broker holds the lease, or it refuses to take a free one) with the
        bound URL and why (``HOLDER is active on DB; taking over when its lease is free``, or a refusal).
        ``engine_factory(settings, listeners, push_url, lease_epoch)``: the engine to run, with these writer
        listeners, the URL of its push channel and the only lease epoch it may claim (None: any)."""
        self.settings = settings
        self.engine_factory = engine_factory
        self.on_ready = on_ready
        #: called as ``on_standby(bound_url, why)`` each time the service starts waiting as a standby
        self.on_standby = on_standby
        self.stopping = threading.Event()
        #: engines of the API's own to dispose of at the stop (the fast status reads' pool)
        self._closing: list[Any] = []
        #: what to stop before the engine: the API-only processes and process 0's private forward server
        self._stops: list[Callable[[], None]] = []
        self._signals = 0

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # only flags here: the main thread does the work
        self._signals += 1
        if self._signals > 1:
            os._exit(FORCED_EXIT)
        self.stopping.set()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status."""
        from broker.api.front import Front, metrics_only
        from broker.api.health import Health, ServiceState
        from broker.api.httpd import HttpServer, Limits
        from broker.api.metrics import NodeBoard, registry_for

        api_settings = self.settings.api
        host, port = parse_listen(api_settings.listen)
        metrics_at = parse_listen(api_settings.metrics_listen, "metrics_listen") if api_settings.metrics_listen \
            else None
        if api_settings.threads < 1:
            raise ConfigError(f"[api] threads: must be at least 1, got {api_settings.threads}")
        if api_settings.header_timeout <= 0 or min(api_settings.min_body_rate,
                                                   api_settings.max_pending_per_address) < 0:
            raise ConfigError("[api] header_timeout must be above 0, min_body_rate and max_pending_per_address at "
                              "least 0")
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        health = Health()
        registry, collector, api_metrics = registry_for(health)
        front = Front(health, registry, api_metrics, metrics_here=metrics_at is None)
        limits = Limits(header_timeout=api_settings.header_timeout, min_body_rate=api_settings.min_body_rate,
                        max_pending_per_address=api_settings.max_pending_per_address,
                        max_body=api_settings.max_request_bytes, drain_timeout=api_settings.drain_timeout)
        # the port opens before the engine starts: health checks see "starting", not a refused connection
        if api_settings.processes < 1:
            raise ConfigError(f"[api] processes: must be at least 1, got {api_settings.processes}")
        servers = [HttpServer((host, port), front, api_settings.threads, limits,
                              reuse_port=api_settings.processes > 1)]
        if metrics_at is not None:
            servers.append(HttpServer(metrics_at, metrics_only(registry), 1, limits))
        threads = []
        try:
            for index, server in enumerate(servers):
                server.prepare()  # binds: with port 0 the real port is known from here on
                threads.append(threading.Thread(target=server.serve, name=f"broker-http{'-metrics' * index}"))
                threads[-1].start()
            bound_host, bound_port = servers[0].bind_addr[:2]
            # DEBUG: a start refused by the engine (exit 2) stays one line; "serving ..." follows at INFO
            log.debug("listening on http://%s:%d (%s)", _url_host(bound_host), bound_port, health.state.value)
            if metrics_at is not None:
                log.info("metrics at http://%s:%d/metrics", _url_host(servers[1].bind_addr[0]),
                         servers[1].bind_addr[1])
            board = NodeBoard()
            public = api_settings.public_url.rstrip("/") or f"http://{_url_host(host)}:{bound_port}"
            engine = self._start_engine(health, board, public + "/broker",
                                        f"http://{_url_host(bound_host)}:{bound_port}")
            if engine is not None:  # None: stopped while a standby
                try:
                    self._serve(engine, front, collector, board, public, (bound_host, bound_port))
                    if api_settings.processes > 1:
                        from broker.api.apionly import start_api_processes

                        self._stops.append(start_api_processes(self.settings, front, limits,
                                                               f"{_url_host(bound_host)}:{bound_port}"))
                    # a timed wait: the Python-level signal handler runs only when the main thread executes
                    # bytecode, and one untimed wait was seen to sleep through a SIGTERM under load
                    while not self.stopping.wait(0.5):
                        pass
                    health.set(ServiceState.STOPPING)
                    log.info("stopping: no new connections; waiting up to %g s for calls in progress",
                             api_settings.drain_timeout)
                    servers[0].stop()
                    threads[0].join()
                finally:
                    for stop in reversed(self._stops):
                        stop()
                    collector.engine = None  # a scrape during the engine's stop reports the service state only
                    for resource in self._closing:
                        resource.dispose()
                    engine.stop()
        finally:
            for server, thread in zip(servers, threads):
                server.stop()
                thread.join()
        log.info("stopped")
        return 0

    def _start_engine(self, health: Any, board: Any, push_url: str, bound: str) -> Any:
        """The started engine; on PostgreSQL, while another broker holds the lease, first wait as a standby
        (:mod:`broker.persistence.standby`). None when a signal came during the wait."""
        from broker.api.health import ServiceState
        from broker.errors import BrokerLocked
        from broker.persistence.db import is_sqlite

        if is_sqlite(self.settings.database_url()):  # one process per SQLite file: a second one exits 3
            return self._engine(board, push_url)
        from broker.persistence.standby import Standby

        standby = Standby(self.settings.database_url(), self.settings.engine, self.stopping)
        try:
            waiting, epoch = standby.look()
            while True:
                if waiting:
                    health.set(ServiceState.STANDBY)
                    if self.on_standby is not None:
                        self.on_standby(bound, standby.why)
                    # a refusal is a warning, as when it comes while waiting
                    log.log(logging.WARNING if standby.refusing else logging.INFO, "standby: %s (looked at every "
                            "%g s)", standby.why, standby.poll)
                    epoch = standby.wait()
                    if epoch is None:
                        return None
                    health.set(ServiceState.STARTING)
                    log.info("standby: the lease on %s is free: taking over", standby.where)
                try:
                    return self._engine(board, push_url, epoch)
                except BrokerLocked:
                    # another standby claimed it first, or its holder renewed it in time: wait again
                    if self.stopping.wait(standby.poll):
                        return None
                    waiting, epoch = standby.look()
        finally:
            standby.close()

    def _engine(self, board: Any, push_url: str, epoch: int | None = None) -> Any:
        """The started engine, with ``board`` among its writer's listeners; elves on hosts with push="true"
        report to ``push_url`` (the core service). ``epoch``: the lease epoch a standby judged free, the only one
        the engine may claim (PostgreSQL; None: any)."""
        from broker.crashpoints import hold_point
        from broker.engine import Engine

        hold_point("serve-start")
        factory = self.engine_factory or (lambda s, listeners, push_url, epoch: Engine(
            s, all_workflows=True, service="serve", listeners=listeners, push_url=push_url, lease_epoch=epoch))
        return factory(self.settings, [board], push_url, epoch).start()

    def _serve(self, engine: Any, front: Any, collector: Any, board: Any, public: str,
               bound: tuple[str, int]) -> None:
        """Resume every workflow, build the two SOAP services behind ``front`` and mark the service active."""
        from broker.api.app import build, quiet_spyne
        from broker.api.context import ApiContext
        from broker.api.edge import Edge, Route
        from broker.api.health import ServiceState
        from broker.api.identity import Authenticator
        from broker.ui.app import Dashboard

        api_settings = self.settings.api
        quiet_spyne()
        resumed = engine.track_all()
        api = ApiContext(self.settings, engine)
        routes = [Route(path, app, namespace, wsdl) for path, (app, namespace, wsdl)
                  in build(api, public, api_settings.max_request_bytes).items()]
        fast = {}
        if api_settings.fast_status:
            from broker.api.fastpath import OPERATION, StatusReader, status_handler
            from broker.persistence.db import make_engine

            # its own pool: each request thread keeps one connection for status reads
            status_db = make_engine(self.settings.database_url(), self.settings, pool_size=api_settings.threads + 1)
            self._closing.append(status_db)
            fast[("/broker", OPERATION)] = status_handler(StatusReader(status_db, engine.progress), api)
            from broker.api.eventpage import OPERATIONS, page_handler

            pages = page_handler(engine.db, api_settings.page_size)
            fast.update({("/broker", operation): pages for operation in OPERATIONS})
        authenticator = Authenticator(engine.sessions, api_settings.credential_ttl, api_settings.threads)
        limits = self.settings.limits  # one setting caps attributes in descriptions and in envelopes
        edge = Edge(routes, authenticator, api_settings.max_request_bytes, fast,
                    max_attributes=(limits.max_attributes_per_element, limits.max_attributes))
        collector.engine, collector.board = engine, board
        front.api.operations = frozenset(name for route in routes for name in operations(route.wsdl))
        front.authenticate = authenticator.user
        front.ui = Dashboard(api, authenticator.user, front.health, secure=public.startswith("https://"))
        front.inner = edge
        front.health.set(ServiceState.ACTIVE)
        log.info("serving IBrokerCore at %s/broker, IBroker at %s/admin and the dashboard at %s/ui/ (%d workflows "
                 "resumed)", public, public, public, len(resumed))
        if self.on_ready is not None:
            self.on_ready(f"http://{_url_host(bound[0])}:{bound[1]}", public)
