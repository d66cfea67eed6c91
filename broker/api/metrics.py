"""``GET /metrics``: the broker's figures in the Prometheus text format (``prometheus_client``).

Each server has its own :class:`~prometheus_client.CollectorRegistry` (never the library's global one: the
tests run several servers in one process, and a second registration there fails). Most figures are read at
scrape time by :class:`BrokerCollector`, at a bounded cost:

* from memory: the node counts of the unfinished workflows as the writer last committed them
  (:class:`NodeBoard`, a writer listener like the progress board), the ready queue (their ``ready`` nodes),
  the writer's commit durations (:class:`~broker.persistence.timings.CommitTimes`), the service state;
* from the database, three short reads on one connection: workflows by state (one grouped count over the
  state index of ``workflows``), in-flight attempts per host (only nodes in an in-flight state, through
  ``ix_nodes_state``: bounded by the scheduling limits) and the outbox (its backlog counted up to
  :data:`BACKLOG_CAP` rows through the partial index of unsent rows, and the age of the oldest one).

API calls are counted as they are answered (:class:`ApiMetrics`). Their ``operation`` label takes only the
operations of the two WSDLs, anything else counts as ``other``: a client cannot make the label set grow.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter as CounterMetric, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from broker.api.health import Health, ServiceState
from broker.persistence.models import Event, Node, Outbox, Workflow
from broker.states import IN_FLIGHT, TERMINAL, WORKFLOW_TERMINAL, NodeState, WorkflowState

#: outbox rows counted at most per scrape (beyond it the backlog shows as this number: the alarm is raised)
BACKLOG_CAP = 100_000
#: the operation label of calls that name no operation of the WSDLs (GET of a WSDL, malformed requests)
OTHER = "other"
#: upper bounds of the API latency buckets, in seconds
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_IN_FLIGHT = tuple(state.value for state in IN_FLIGHT)
_DONE = frozenset(state.value for state in TERMINAL)


class NodeBoard:
    """Node counts by state of the unfinished workflows, as last committed; and the nodes of the workflows
    that ended since the start, by final state. A writer listener (called in the writer thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, dict[str, int]] = {}
        self._totals: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()

    def __call__(self, workflow_id: int, global_id: str, state: WorkflowState, counts: Mapping[str, int]) -> None:
        with self._lock:
            before = self._live.pop(workflow_id, None)
            if before is not None:
                self._totals.subtract(before)
            if WorkflowState(state) not in WORKFLOW_TERMINAL:
                self._live[workflow_id] = dict(counts)
                self._totals.update(counts)
            elif before is not None:  # it ended now (an ended one loaded for a command is not counted twice)
                self._ended.update(counts)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(nodes of unfinished workflows by state, nodes of workflows ended since the start by state)."""
        with self._lock:
            return {k: n for k, n in self._totals.items() if n}, dict(self._ended)



class ApiMetrics:
    """Calls answered by the edge, by operation: a latency histogram and a counter by HTTP status."""

    def __init__(self, registry: CollectorRegistry, operations: Iterable[str]):
        self.operations = frozenset(operations)
        self.latency = Histogram("broker_api_request_seconds", "Time to answer an API call, by operation",
                                 ["operation"], registry=registry, buckets=API_BUCKETS)
        self.calls = CounterMetric("broker_api_requests", "API calls answered, by operation and HTTP status",
                                   ["operation", "status"], registry=registry)

    def observe(self, operation: str | None, status: str, seconds: float) -> None:
        label = operation if operation in self.operations else OTHER
        self.latency.labels(label).observe(seconds)
        self.calls.labels(label, status[:3]).inc()


class BrokerCollector(Collector):
    """The service state and the engine's figures, read at scrape time."""

    def __init__(self, health: Health, engine: Any = None, board: NodeBoard | None = None):
        """``engine``: None until it has started (then only the service state is reported)."""
        self.health = health
        self.engine = engine
        self.board = board

    def describe(self) -> Iterator[Any]:
        return iter(())  # collected at scrape time only: the registry must not call collect() to register

    def collect(self) -> Iterator[Any]:
        state = GaugeMetricFamily("broker_service_state", "1 for the state this broker is in (active, standby, "
                                  "starting, stopping, api), 0 for the others", labels=["state"])
        for candidate in ServiceState:
            state.add_metric([candidate.value], 1.0 if self.health.state is candidate else 0.0)
        yield state
        engine = self.engine
        if engine is None:
            return
        yield from self._memory(engine)
        yield from self._database(engine)

    def _memory(self, engine: Any) -> Iterator[Any]:
        if self.board is not None:
            live, ended = self.board.snapshot()
            nodes = GaugeMetricFamily("broker_nodes", "Nodes of the unfinished workflows by state, as last "
                                      "committed", labels=["state"])
            for node_state in NodeState:
                nodes.add_metric([node_state.value], live.get(node_state.value, 0))
            yield nodes
            finished = CounterMetricFamily("broker_nodes_ended", "Nodes of the workflows that ended since this "
                                           "broker started, by final state", labels=["state"])
            for value in sorted(_DONE | set(ended)):
                finished.add_metric([value], ended.get(value, 0))
            yield finished
            yield GaugeMetricFamily("broker_ready_queue_length", "Ready nodes waiting for a slot",
                                    value=live.get(NodeState.READY.value, 0))
        store = getattr(engine, "store", None)
        if store is not None:
            snap = store.commit_times.snapshot()
            commits = HistogramMetricFamily("broker_writer_commit_seconds", "Time the writer takes to commit one "
                                            "group of changes (retries while the database is away included)")
            commits.add_metric([], [(_bound(b), n) for b, n in snap.buckets], sum_value=snap.total)
            yield commits

    def _database(self, engine: Any) -> Iterator[Any]:
        workflows = GaugeMetricFamily("broker_workflows", "Workflows in the database by state", labels=["state"])
        hosts = GaugeMetricFamily("broker_in_flight_attempts", "Attempts staging, queued or running, by host",
                                  labels=["host"])
        backlog = GaugeMetricFamily("broker_outbox_backlog", f"Outbox rows not yet published on the bus (counted "
                                    f"up to {BACKLOG_CAP})")
        lag = GaugeMetricFamily("broker_outbox_lag_seconds", "Age of the oldest event not yet published (0: none)")
        with engine.db.connect() as connection:
            by_state = dict(connection.execute(select(Workflow.state, func.count()).group_by(Workflow.state)).all())
            per_host = connection.execute(
                select(Node.host, func.count()).where(Node.state.in_(_IN_FLIGHT), Node.host.is_not(None))
                .group_by(Node.host)).all()
            unsent = select(Outbox.id).where(Outbox.sent_at.is_(None)).limit(BACKLOG_CAP).subquery()
            waiting = connection.execute(select(func.count()).select_from(unsent)).scalar_one()
            oldest = connection.execute(
                select(Event.time).join(Outbox, Outbox.event_id == Event.id).where(Outbox.sent_at.is_(None))
                .order_by(Outbox.id).limit(1)).scalar()
        for workflow_state in WorkflowState:
            workflows.add_metric([workflow_state.value], by_state.get(workflow_state.value, 0))
        yield workflows
        for host, count in per_host:
            hosts.add_metric([host], count)
        yield hosts
        backlog.add_metric([], waiting)
        yield backlog
        age = 0.0 if oldest is None else (dt.datetime.now(dt.UTC) - _utc(oldest)).total_seconds()
        lag.add_metric([], max(age, 0.0))
        yield lag


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def registry_for(health: Health, operations: Iterable[str] = ()) -> tuple[CollectorRegistry, BrokerCollector, ApiMetrics]:
    """A server's own registry with its collector (engine set once started) and its API call metrics."""
    registry = CollectorRegistry(auto_describe=False)
    collector = BrokerCollector(health)
    registry.register(collector)
    return registry, collector, ApiMetrics(registry, operations)


__all__ = ["ApiMetrics", "BrokerCollector", "NodeBoard", "OTHER", "registry_for"]
