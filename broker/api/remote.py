"""``broker serve`` with ``[api] writes = rows``: an API process on its own, on this or another machine.

It runs no engine and needs no ``broker serve`` beside it: it listens on its own ``[api] listen`` address,
serves both SOAP services whole (the same operations, answers and faults as ``broker serve``) with its own
database connections, and makes every change as a request row that the active broker (or, after a
takeover, its standby) applies (:mod:`broker.api.rows`). ``/health`` answers ``200 api`` while the database
can be read; ``/metrics`` (admins, or ``[api] metrics_listen``) shows this process's calls. It does not
serve the dashboard (its live pages follow the engine's committed state in memory).

PostgreSQL only: a SQLite file belongs to the one machine whose broker holds it (API processes beside that
broker: ``[api] processes``). SIGTERM drains as ``broker serve`` does.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from broker.config import Settings
from broker.errors import ConfigError, DatabaseError

log = logging.getLogger("broker.api")

#: values of [api] writes
WRITES = ("engine", "rows")


def check_writes(settings: Settings) -> bool:
    """Whether ``[api] writes`` asks for an API process without an engine; raises ConfigError for a bad value
    or for rows on SQLite."""
    from broker.persistence.db import is_sqlite

    writes = settings.api.writes
    if writes not in WRITES:
        raise ConfigError(f"[api] writes: invalid value {writes!r} (expected engine or rows)")
    if writes == "rows" and is_sqlite(settings.database_url()):
        raise ConfigError("[api] writes = rows needs PostgreSQL: a SQLite database is served by the one machine "
                          "whose broker holds it (API processes beside it: [api] processes = N)")
    return writes == "rows"


def serve_rows(settings: Settings, on_ready: Callable[[str, str], None] | None = None) -> int:
    """Serve the API without an engine until SIGTERM (drained as ``broker serve`` drains); the exit status.
    ``on_ready(bound_url, public_url)`` once calls are served."""
    from broker.api.addresses import operations, parse_listen, url_host
    from broker.api.app import build, quiet_spyne
    from broker.api.apionly import probe
    from broker.api.context import ApiContext
    from broker.api.edge import Edge, Route
    from broker.api.front import Front, metrics_only
    from broker.api.health import Health, ServiceState
    from broker.api.httpd import HttpServer, Limits
    from broker.api.identity import Authenticator
    from broker.api.metrics import registry_for
    from broker.api.rows import RowsEngine
    from broker.persistence.db import current_revision, make_engine, revision_problem

    api_settings = settings.api
    check_writes(settings)
    listen = parse_listen(api_settings.listen)
    metrics_at = parse_listen(api_settings.metrics_listen, "metrics_listen") if api_settings.metrics_listen else None
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    db = make_engine(settings.database_url(), settings, pool_size=2 * api_settings.threads + 1)
    servers: list[Any] = []
    threads: list[threading.Thread] = []
    try:
        # requests carry this version's payloads: a database at another revision is refused, as a broker does
        if problem := revision_problem(current_revision(db), settings.database_url()):
            raise DatabaseError(problem)
        health = Health(ServiceState.STARTING, reachable=probe(db))
        registry, _, api_metrics = registry_for(health)
        front = Front(health, registry, api_metrics, metrics_here=metrics_at is None)
        limits = Limits(header_timeout=api_settings.header_timeout, min_body_rate=api_settings.min_body_rate,
                        max_pending_per_address=api_settings.max_pending_per_address,
                        max_body=api_settings.max_request_bytes, drain_timeout=api_settings.drain_timeout)
        servers.append(HttpServer(listen, front, api_settings.threads, limits))
        if metrics_at is not None:
            servers.append(HttpServer(metrics_at, metrics_only(registry), 1, limits))
        for index, server in enumerate(servers):
            server.prepare()
            threads.append(threading.Thread(target=server.serve, name=f"broker-http{'-metrics' * index}"))
            threads[-1].start()
        bound_host, bound_port = servers[0].bind_addr[:2]
        public = api_settings.public_url.rstrip("/") or f"http://{url_host(listen[0])}:{bound_port}"
        quiet_spyne()
        rows = RowsEngine(settings, db)
        api = ApiContext(settings, rows, make_deleter=rows.deleter)
        routes = [Route(path, app, namespace, wsdl) for path, (app, namespace, wsdl)
                  in build(api, public, api_settings.max_request_bytes).items()]
        fast: dict[tuple[str, str], Any] = {}
        if api_settings.fast_status:
            from broker.api.eventpage import OPERATIONS, page_handler
            from broker.api.fastpath import OPERATION, StatusReader, status_handler

            fast[("/broker", OPERATION)] = status_handler(StatusReader(db), api)
            pages = page_handler(db, api_settings.page_size)
            fast.update({("/broker", operation): pages for operation in OPERATIONS})
        authenticator = Authenticator(api.sessions, api_settings.credential_ttl, api_settings.threads)
        edge = Edge(routes, authenticator, api_settings.max_request_bytes, fast,
                    max_attributes=(settings.limits.max_attributes_per_element, settings.limits.max_attributes))
        front.api.operations = frozenset(name for route in routes for name in operations(route.wsdl))
        front.authenticate = authenticator.user
        front.inner = edge
        health.set(ServiceState.API)
        log.info("API process without an engine at %s/broker and %s/admin: changes go to the active broker as "
                 "request rows", public, public)
        if on_ready is not None:
            on_ready(f"http://{url_host(bound_host)}:{bound_port}", public)
        while not stopping.wait(0.5):  # timed: a signal handler runs only between bytecodes of this thread
            pass
        health.set(ServiceState.STOPPING)
        log.info("stopping: no new connections; waiting up to %g s for calls in progress", api_settings.drain_timeout)
    finally:
        for server, thread in zip(servers, threads):
            server.stop()
            thread.join()
        db.dispose()
    log.info("stopped")
    return 0


__all__ = ["check_writes", "serve_rows"]
