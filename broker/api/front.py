"""The WSGI application in front of the edge: ``/health``, ``/metrics``, the dashboard under ``/ui/`` (``/``
leads there), the API calls' figures, and the answer while the services are not built yet.

``broker serve`` opens its port before the engine starts, so a load balancer sees ``starting`` rather than a
refused connection; until :attr:`Front.inner` is set every SOAP call is answered with a 503 fault. ``/health``
needs no credentials; ``/metrics`` on the service port needs an admin's HTTP Basic credentials (401 without or
with wrong ones, 403 for a user without the admin role) unless ``[api] metrics_listen`` serves it on its own
address, without authentication (:func:`metrics_only`): then the service port does not serve it at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from broker.api.edge import OPERATION_KEY
from broker.api.edge import _basic as basic_credentials
from broker.api.faults import FaultSpec, envelope
from broker.api.health import Health, ServiceState
from broker.api.metrics import ApiMetrics
from broker.errors import BrokerError

log = logging.getLogger("broker.api")

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: the namespace of the fault answered while starting (the request was never routed)
FAULT_NAMESPACE = "urn:workflow-broker:core:v1"
HEALTH, METRICS, UI = "/health", "/metrics", "/ui"


class Front:
    """Health and metrics, then the edge (``inner``) once it is built, timing every call it answers."""

    def __init__(self, health: Health, registry: CollectorRegistry, api: ApiMetrics, *,
                 metrics_here: bool = True):
        """``metrics_here``: serve ``/metrics`` (to admins) on this port; False when ``metrics_listen`` does."""
        self.health = health
        self.registry = registry
        self.api = api
        self.metrics_here = metrics_here
        #: the edge; None while starting
        self.inner: App | None = None
        #: the dashboard (broker.ui); None while starting
        self.ui: App | None = None
        #: set once the engine has started: checks an admin's credentials -> Verified (raises otherwise)
        self.authenticate: Callable[[str, str], Any] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/") or "/"
        if path == HEALTH:
            status, body = self.health.answer()
            return _text(start_response, status, body, [("Cache-Control", "no-store")])
        if path == METRICS and self.metrics_here:
            return self._metrics(environ, start_response)
        if path == UI or path.startswith(UI + "/"):
            if self.ui is None:
                return _text(start_response, "503 Service Unavailable",
                             f"the broker is {self.health.state.value}: try again shortly\n".encode(),
                             [("Retry-After", "5")])
            return self.ui(environ, start_response)
        if path == "/" and environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
            return _text(start_response, "303 See Other", b"the dashboard is at /ui/\n", [("Location", "/ui/")])
        inner = self.inner
        if inner is None:
            state = self.health.state
            text = ("this broker is a standby: another broker is active on its database (call that one; this one "
                    "takes over if it stops)" if state is ServiceState.STANDBY
                    else f"the broker is {state.value}: try again shortly")
            body = envelope(FaultSpec("Server", text), FAULT_NAMESPACE)
            return _text(start_response, "503 Service Unavailable", body, [("Retry-After", "5")],
                         "text/xml; charset=utf-8")
        started = time.perf_counter()
        captured = ["500"]

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured[0] = status
            return start_response(status, headers, exc_info)

        answer = inner(environ, capture)  # the edge answers whole (a list): the time is the call's
        self.api.observe(environ.get(OPERATION_KEY), captured[0], time.perf_counter() - started)
        return answer

    def _metrics(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        challenge = [("WWW-Authenticate", 'Basic realm="workflow broker"')]
        try:
            credentials = basic_credentials(environ.get("HTTP_AUTHORIZATION", ""))
        except BrokerError as exc:
            return _text(start_response, "401 Unauthorized", f"{exc}\n".encode(), challenge)
        if credentials is None:
            return _text(start_response, "401 Unauthorized", b"authentication required: HTTP Basic, an admin\n",
                         challenge)
        if self.authenticate is None:
            return _text(start_response, "503 Service Unavailable",
                         f"the broker is {self.health.state.value}\n".encode())
        try:
            user = self.authenticate(*credentials)
        except BrokerError:
            return _text(start_response, "401 Unauthorized", b"wrong user name or password\n", challenge)
        if not user.admin:
            return _text(start_response, "403 Forbidden", b"/metrics needs the admin role\n")
        return scrape(self.registry, start_response)


def metrics_only(registry: CollectorRegistry) -> App:
    """The application of ``[api] metrics_listen``: ``/metrics`` without authentication, nothing else."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/") or "/"
        if path != METRICS:
            return _text(start_response, "404 Not Found", b"only /metrics is served here\n")
        return scrape(registry, start_response)

    return app


def scrape(registry: CollectorRegistry, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The registry in the Prometheus text format (a collector that fails is a 500 with one log line)."""
    try:
        body = generate_latest(registry)
    except Exception as exc:  # the database away, most likely: the scraper records the failure
        log.warning("/metrics not answered: %s", exc)
        return _text(start_response, "500 Internal Server Error", b"metrics could not be collected\n")
    return _text(start_response, "200 OK", body, content_type=CONTENT_TYPE_LATEST)


def _text(start_response: Callable[..., Any], status: str, body: bytes, headers: list[tuple[str, str]] | None = None,
          content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *(headers or [])])
    return [body]


__all__ = ["Front", "metrics_only", "scrape"]
