"""Benchmark: how long many users' nodes wait for a slot with the shipped sizing (issue 15, "Sized for a
service").

A real ``broker serve`` (SQLite, shipped defaults), warmed by one workflow. 20 clients at once, each on its own connection, submit
a workflow of 20 independent ``sleep 1`` nodes for the local host and poll its status until it ends.
Each client does that 3 times in a row (the first round is a burst: everyone submits at once; the later
ones come as workflows end). Printed: the wait for a slot (from the node's ``ready`` event to its ``queued`` one, as the events table
records them) p50 and p99 over every node, submit-to-done p50 over the workflows, and the broker's CPU
time. The baseline is the same load on a broker with the old sizing (one broker-wide ``[engine]
max_in_flight = 8``), in the same invocation.

Target: the wait p50 under 100 ms with the shipped defaults. Exit status 1 means a wrong answer (a
workflow that did not succeed), never a slow one.

    PYTHONPATH=. python tests/perf/bench_slots.py [--tiny]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.api.helpers import Server, add_users, address, basic, envelope, post  # noqa: E402
from tests.fixtures import DEADLINE, wait_for  # noqa: E402

TARGET_WAIT_P50_S = 0.100
#: how often a client polls its workflow's status
POLL_S = 0.2
_GID = re.compile(rb"<(?:\w+:)?globalId>([^<]+)</")
_STATE = re.compile(rb"<(?:\w+:)?state>([^<]+)</")


def document(nodes: int, seconds: float) -> str:
    body = "".join(f'<node id="n{i}"><payload type="sh">sleep {seconds}</payload></node>' for i in range(nodes))
    return f'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="bench">{body}</workflow>'


def client(server: Server, text: str, results: list, start: threading.Barrier, rounds: int = 1) -> None:
    """One user: ``rounds`` times submit, then poll until the workflow ended; appends (global id, seconds,
    final state, round) for each workflow."""
    connection = http.client.HTTPConnection(*address(server), timeout=DEADLINE)
    auth = basic("alice", "alice-pw")
    submit = envelope("<c:submit><c:submission><c:workflowContent>"
                      + text.replace("&", "&amp;").replace("<", "&lt;")
                      + "</c:workflowContent></c:submission></c:submit>")
    try:
        start.wait()
        for round_ in range(rounds):
            began = time.monotonic()
            status, answer = post(connection, submit, auth)
            assert status == 200, answer[:500]
            gid = _GID.search(answer).group(1).decode()
            query = envelope(f"<c:getStatusInfoForId><c:globalId>{gid}</c:globalId></c:getStatusInfoForId>")
            state = ""

            def ended() -> bool:
                nonlocal state
                status, answer = post(connection, query, auth)
                state = _STATE.search(answer).group(1).decode() if status == 200 else "?"
                return state in ("succeeded", "failed", "cancelled")

            wait_for(ended, what=f"workflow {gid} ends", interval=POLL_S, error=AssertionError)
            results.append((gid, time.monotonic() - began, state, round_))
    finally:
        connection.close()


def slot_waits(url: str, global_ids: set[str]) -> list[float]:
    """Seconds from each node's ready event to its queued event (the slot granted), in those workflows."""
    from sqlalchemy import select

    from broker.persistence.db import make_engine
    from broker.persistence.models import Event, Workflow

    engine = make_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(select(Event.workflow_id, Event.node_path, Event.state, Event.time)
                             .join(Workflow, Workflow.id == Event.workflow_id)
                             .where(Event.node_path.is_not(None), Event.state.in_(("ready", "queued")),
                                    Workflow.global_id.in_(global_ids))).all()
    finally:
        engine.dispose()
    seen: dict[tuple[int, str], dict[str, dt.datetime]] = {}
    for workflow_id, path, state, time_ in rows:
        seen.setdefault((workflow_id, path), {}).setdefault(state, time_)
    return [(s["queued"] - s["ready"]).total_seconds() for s in seen.values() if "ready" in s and "queued" in s]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> tuple[float, float]:
    values = sorted(values)
    return statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))]


def run(label: str, clients: int, nodes: int, seconds: float, rounds: int, extra: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-slots-") as scratch:
        tmp = Path(scratch)
        url = f"sqlite:///{tmp / 'broker.db'}"
        from broker.persistence import migrate

        migrate.upgrade(url)
        add_users(url)
        server = Server(url, tmp, {"BROKER_LOGGING_LEVEL": "WARNING", "BROKER_API_MAX_PENDING_PER_ADDRESS": "0",
                                   **extra})
        server.start()
        try:
            # a service is warm: the first workflow of a fresh process pays imports and first queries (~70 ms)
            client(server, document(1, 0), [], threading.Barrier(1))
            results: list = []
            start = threading.Barrier(clients)
            threads = [threading.Thread(target=client, args=(server, document(nodes, seconds), results, start,
                                                             rounds))
                       for _ in range(clients)]
            cpu0 = cpu_seconds(server.process.pid)
            began = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - began
            cpu = cpu_seconds(server.process.pid) - cpu0
        finally:
            server.stop(expect=None)
        burst = slot_waits(url, {r[0] for r in results if r[3] == 0})
        steady = slot_waits(url, {r[0] for r in results if r[3] > 0})
    if len(results) != clients * rounds or any(r[2] != "succeeded" for r in results) \
            or len(burst) + len(steady) != clients * rounds * nodes:
        print(f"{label}: WRONG: {len(results)} of {clients * rounds} workflows ended, states "
              f"{sorted({r[2] for r in results})}, {len(burst) + len(steady)} nodes measured")
        return {}
    figures = {"done": statistics.median(r[1] for r in results)}
    figures["p50"], figures["p99"] = percentiles(burst + steady)
    print(f"{label:<31} slot wait p50 {figures['p50'] * 1000:7.1f} ms p99 {figures['p99'] * 1000:7.1f} ms | "
          f"submit-to-done p50 {figures['done']:5.2f} s | broker CPU {cpu:5.1f} s in {wall:5.1f} s")
    for name, waits in (("first round (all submit at once)", burst), ("later rounds", steady)):
        if waits:
            p50, p99 = percentiles(waits)
            print(f"  {name:<34} slot wait p50 {p50 * 1000:7.1f} ms p99 {p99 * 1000:7.1f} ms")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    args = parser.parse_args()
    clients, nodes, seconds, rounds = (4, 5, 0.2, 2) if args.tiny else (20, 20, 1, 3)
    print(f"{clients} clients x {rounds} rounds of a {nodes}-node workflow of sleep {seconds} on the local host "
          "(SQLite)")
    old = run("old sizing (max_in_flight = 8)", clients, nodes, seconds, rounds, {"BROKER_ENGINE_MAX_IN_FLIGHT": "8"})
    new = run("shipped defaults", clients, nodes, seconds, rounds, {})
    if not old or not new:
        return 1
    print(f"slot wait p50: {old['p50'] / max(new['p50'], 1e-6):.0f}x shorter; submit-to-done p50: "
          f"{old['done'] / new['done']:.1f}x shorter | target p50 < {TARGET_WAIT_P50_S * 1000:.0f} ms: "
          f"{'met' if new['p50'] < TARGET_WAIT_P50_S else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
