"""Operating ``broker serve``: ``GET /health`` through start, service and drain; ``GET /metrics`` for admins or on
``[api] metrics_listen``; the label bound of the API figures; the node board's counts."""

from __future__ import annotations

import http.client
import re
import socket
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.api.health import Health, ServiceState
from broker.api.metrics import OTHER, NodeBoard, registry_for
from tests.api.helpers import USERS, Server, add_users, basic, waits_for, workflow
from tests.fixtures import wait_for

#: every family /metrics must have (the histograms' and counters' base names)
FAMILIES = {"broker_service_state", "broker_workflows", "broker_nodes", "broker_nodes_ended",
            "broker_ready_queue_length", "broker_in_flight_attempts", "broker_outbox_backlog",
            "broker_outbox_lag_seconds", "broker_writer_commit_seconds", "broker_api_request_seconds",
            "broker_api_requests"}


def get(base: str, path: str, user: str | None = None, password: str | None = None) -> tuple[int, str]:
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        headers = {} if user is None else {"Authorization": basic(user, password or USERS[user][0])}
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the Prometheus text; also checks the families are there."""
    families = list(text_string_to_metric_families(text))
    assert FAMILIES <= {family.name for family in families}, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


def logged(server: Server, pattern: str) -> re.Match[str]:
    return wait_for(lambda: re.search(pattern, server.log_text()), what=f"{pattern!r} in the log")


@pytest.fixture
def fresh(migrated_url, tmp_path):
    """Servers of one test on one migrated database (its users added); all stopped at the end."""
    add_users(migrated_url)
    started: list[Server] = []

    def make(**env: str) -> Server:
        server = Server(migrated_url, tmp_path, env)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.process is not None:
            server.stop(expect=None)
        server.close()


@pytest.mark.slow
def test_health_answers_starting_until_the_engine_runs_then_active(fresh, tmp_path):
    go = tmp_path / "go"
    server = fresh(BROKER_TEST_HOLD=f"serve-start:{go}", BROKER_LOGGING_LEVEL="DEBUG").start(wait=False)
    base = logged(server, r"listening on (http://\S+) \(starting\)").group(1)
    assert get(base, "/health") == (503, "starting")
    status, body = get(base, "/broker?wsdl")  # nothing else is served yet: a fault, not a refused connection
    assert status == 503 and "starting" in body
    go.touch()
    logged(server, "serving IBrokerCore")
    assert get(base, "/health") == (200, "active")


@pytest.mark.slow
def test_health_answers_stopping_while_the_server_drains(fresh):
    # one connection without a complete request per address: a second one is refused, which shows that the
    # first has been accepted (it is not waiting in the kernel's backlog, where the stop would reset it)
    server = fresh(BROKER_API_HEADER_TIMEOUT="120", BROKER_API_MAX_PENDING_PER_ADDRESS="1").start()
    url = urllib.parse.urlsplit(server.base)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: broker\r\n")  # begun before SIGTERM: answered in the drain
        wait_for(lambda: get(server.base, "/health")[0] == 429, what="the first connection to be accepted")
        server.process.terminate()
        logged(server, "stopping: no new connections")
        sock.sendall(b"\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 ") and answer.endswith(b"\r\n\r\nstopping"), answer
    server.process.wait(timeout=60)  # the drain ends by itself (another signal would force the exit)
    assert server.stop(expect=0) == 0


@pytest.mark.slow
def test_metrics_need_an_admin_and_count_a_finished_workflow(fresh, tmp_path):
    # a bus that never answers: every event stays in the outbox, so backlog and lag are known
    server = fresh(BROKER_EVENTS_URL="stomp://127.0.0.1:1").start()
    assert get(server.base, "/metrics")[0] == 401
    assert get(server.base, "/metrics", "root", "wrong")[0] == 401
    assert get(server.base, "/metrics", "alice")[0] == 403
    gate = tmp_path / "gate"
    body = (f'<node id="a"><payload type="sh">true</payload></node>'
            f'<node id="b"><dependsOn node="a"/>{waits_for(gate)}</node>'
            f'<node id="c"><dependsOn node="b"/><payload type="sh">true</payload></node>')
    handle = server.core().submit({"workflowContent": workflow(body)})

    def running() -> dict | None:
        status, text = get(server.base, "/metrics", "root")
        assert status == 200, text
        found = samples(text)
        return found if value(found, "broker_nodes", state="running") == 1 else None

    during = wait_for(running, what="node b running in /metrics")
    assert value(during, "broker_in_flight_attempts", host="localhost") == 1
    assert value(during, "broker_nodes", state="waiting") == 1
    assert value(during, "broker_nodes", state="succeeded") == 1
    assert value(during, "broker_workflows", state="running") == 1
    assert value(during, "broker_service_state", state="active") == 1
    assert value(during, "broker_service_state", state="standby") == 0
    gate.touch()
    server.wait_state(handle.id, "succeeded")
    found = samples(get(server.base, "/metrics", "root")[1])
    assert value(found, "broker_workflows", state="succeeded") == 1
    assert value(found, "broker_nodes_ended_total", state="succeeded") == 3
    assert sum(v for (name, _), v in found.items() if name == "broker_nodes") == 0
    assert value(found, "broker_ready_queue_length") == 0
    assert not any(name == "broker_in_flight_attempts" for name, _ in found)
    assert value(found, "broker_api_requests_total", operation="submit", status="200") == 1
    assert value(found, "broker_api_request_seconds_count", operation="submit") == 1
    assert value(found, "broker_writer_commit_seconds_count") >= 4  # submit, then each node's moves
    from sqlalchemy import func, select

    from broker.persistence.models import Outbox

    with server.sessions()() as s:
        unsent = s.execute(select(func.count()).select_from(Outbox).where(Outbox.sent_at.is_(None))).scalar_one()
    assert unsent > 0 and value(found, "broker_outbox_backlog") == unsent
    assert value(found, "broker_outbox_lag_seconds") > 0


@pytest.mark.slow
def test_metrics_listen_serves_metrics_without_authentication_and_the_service_port_then_does_not(fresh):
    server = fresh(BROKER_API_METRICS_LISTEN="127.0.0.1:0").start()
    metrics = logged(server, r"metrics at (http://\S+)/metrics").group(1)
    status, text = get(metrics, "/metrics")
    assert status == 200
    assert value(samples(text), "broker_service_state", state="active") == 1
    assert get(metrics, "/health")[0] == 404  # only /metrics there
    assert get(server.base, "/metrics", "root")[0] == 404
    assert get(server.base, "/health") == (200, "active")


def test_api_figures_name_only_known_operations():
    registry, _, api = registry_for(Health(ServiceState.ACTIVE), ["submit"])
    api.observe("submit", "200 OK", 0.01)
    for name in ("x" * 1000, "evil\n", None):
        api.observe(name, "500 Internal Server Error", 0.02)
    labels = {s.labels["operation"] for family in registry.collect() if family.name.startswith("broker_api_")
              for s in family.samples}
    assert labels == {"submit", OTHER}


def test_the_node_board_counts_unfinished_workflows_and_each_end_once():
    board = NodeBoard()
    board(1, "wf-1", "running", {"running": 2, "waiting": 1})
    board(2, "wf-2", "running", {"ready": 1})
    assert board.snapshot() == ({"running": 2, "waiting": 1, "ready": 1}, {})
    board(1, "wf-1", "succeeded", {"succeeded": 3})
    board(1, "wf-1", "succeeded", {"succeeded": 3})  # an ended workflow loaded again for a command
    board(9, "wf-9", "failed", {"failed": 1})  # ended before this broker knew it
    assert board.snapshot() == ({"ready": 1}, {"succeeded": 3})


def test_health_is_200_only_when_active_or_an_api_process_that_reads_the_database():
    assert Health().answer() == ("503 Service Unavailable", b"starting")
    health = Health(ServiceState.ACTIVE)
    assert health.answer() == ("200 OK", b"active")
    for state in (ServiceState.STANDBY, ServiceState.STOPPING):
        health.set(state)
        assert health.answer() == ("503 Service Unavailable", state.value.encode())
    assert Health(ServiceState.API, reachable=lambda: True).answer() == ("200 OK", b"api")
    assert Health(ServiceState.API, reachable=lambda: False).answer()[0].startswith("503")
