"""Benchmark: ``getStatusInfoForId`` calls/s of ``broker serve`` with ``[api] processes`` = 1, 2 and 4 (issue 15,
"The API scales out").

Three real ``broker serve`` on SQLite (shipped settings but the process count), each with one finished
workflow, run side by side; the load generator measures them in turn, three rounds interleaved (1, 2, 4, 1,
2, 4, ...), and prints the median round of each. The generator is 4 processes of 4 threads, each thread one
keep-alive connection of its own (16: new connections are spread over the listening sockets by the
kernel), sending a prebuilt envelope with HTTP Basic credentials after one warm-up call. Printed: calls/s,
p50 and p99 latency, the CPU time the generator used (its share of the machine's CPUs) and the servers'.
The baseline is the single process in the same invocation.

Target (on the README's 2-CPU machine, shared with the generator): with 2 processes at least 1.3 times the
single-process rate and at least 1,000 calls/s, p99 < 50 ms. Exit status 1 means a wrong answer, never a
slow one.

    PYTHONPATH=. python tests/perf/bench_processes.py [--tiny]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from typing import Any
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.api.helpers import EXAMPLES, Server, add_users  # noqa: E402

ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CORE = "urn:workflow-broker:core:v1"
AUTH = "Basic " + base64.b64encode(b"alice:alice-pw").decode()
GENERATORS, THREADS = 4, 4
TARGET_RATIO, TARGET_CALLS, TARGET_P99_MS = 1.3, 1000.0, 50.0


def _post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", "/broker", body=body, headers={"Content-Type": "text/xml; charset=utf-8",
                                                               "Authorization": AUTH})
    response = connection.getresponse()
    return response.status, response.read()


def _generator(base: str, body: bytes, check: bytes, calls: int, start: Any, out: Any) -> None:
    """One generator process: THREADS connections, ``calls`` calls each; puts (latencies ms, wrong, cpu s)."""
    url = urllib.parse.urlsplit(base)
    latencies: list[float] = []
    wrong = [0]
    lock = threading.Lock()
    ready, go = threading.Barrier(THREADS + 1), threading.Event()

    def worker() -> None:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        _post(connection, body)  # connect and warm up outside the measurement
        ready.wait()
        go.wait()
        mine = []
        for _ in range(calls):
            t0 = time.perf_counter()
            status, answer = _post(connection, body)
            mine.append((time.perf_counter() - t0) * 1000)
            if status != 200 or check not in answer:
                wrong[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    ready.wait()
    start.wait()  # every generator process warmed up: all start together
    go.set()
    for thread in threads:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put((latencies, wrong[0], usage.ru_utime + usage.ru_stime))


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def server_pids(server: Server) -> list[int]:
    pids = [server.process.pid]
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return pids


def measure(server: Server, body: bytes, check: bytes, calls: int) -> dict[str, float]:
    context = multiprocessing.get_context("fork")
    start, out = context.Barrier(GENERATORS + 1), context.Queue()
    procs = [context.Process(target=_generator, args=(server.base, body, check, calls, start, out))
             for _ in range(GENERATORS)]
    for proc in procs:
        proc.start()
    pids = server_pids(server)
    start.wait()
    server_cpu0, t0 = cpu_of(pids), time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - t0
    server_cpu = cpu_of(pids) - server_cpu0
    for proc in procs:
        proc.join()
    latencies = sorted(x for r in results for x in r[0])
    return {"rate": len(latencies) / elapsed, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "wrong": sum(r[1] for r in results), "gen_cpu": sum(r[2] for r in results) / elapsed,
            "server_cpu": server_cpu / elapsed}


def start_server(tmp: Path, processes: int) -> tuple[Server, bytes, bytes]:
    from broker.persistence import migrate

    tmp.mkdir()
    url = f"sqlite:///{tmp / 'broker.db'}"
    migrate.upgrade(url)
    add_users(url)
    server = Server(url, tmp, {"BROKER_LOGGING_LEVEL": "WARNING", "BROKER_API_PROCESSES": str(processes)}).start()
    handle = server.core().submit({"workflowContent": (EXAMPLES / "hello.xml").read_text(encoding="utf-8")})
    server.wait_state(handle.id, "succeeded")
    body = (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{ENV}" xmlns:c="{CORE}"><s:Body>'
            f"<c:getStatusInfoForId><c:globalId>{handle.globalId}</c:globalId></c:getStatusInfoForId>"
            "</s:Body></s:Envelope>").encode()
    if processes > 1:  # every API-only process listening before the first measurement
        from tests.fixtures import wait_for

        wait_for(lambda: server.log_text().count("forwarding the other calls") >= processes - 1
                 or len(server_pids(server)) >= processes, what="the API-only processes", error=AssertionError)
    return server, body, b"<s0:state>succeeded</s0:state>"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    args = parser.parse_args()
    counts, rounds, calls = ((1, 2), 1, 20) if args.tiny else ((1, 2, 4), 3, 250)
    figures: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as scratch:
        servers = {n: start_server(Path(scratch) / f"p{n}", n) for n in counts}
        try:
            for _ in range(rounds):
                for n in counts:
                    figures[n].append(measure(servers[n][0], servers[n][1], servers[n][2], calls))
        finally:
            for server, _, _ in servers.values():
                server.stop(expect=None)
    wrong = sum(f["wrong"] for runs in figures.values() for f in runs)
    print(f"getStatusInfoForId, {GENERATORS * THREADS} connections ({GENERATORS} generator processes x {THREADS} "
          f"threads), {calls} calls each, {os.cpu_count()} CPUs, median of {rounds} interleaved rounds")
    median: dict[int, dict[str, float]] = {}
    for n in counts:
        runs = sorted(figures[n], key=lambda f: f["rate"])
        median[n] = runs[len(runs) // 2]
        f = median[n]
        each = ", ".join(f"{r['rate']:.0f}" for r in figures[n])
        print(f"processes = {n}: {f['rate']:7.0f} calls/s (rounds: {each})"
              f" | p50 {f['p50']:5.1f} ms p99 {f['p99']:5.1f} ms | generator CPU {f['gen_cpu']:.2f} CPUs, "
              f"server CPU {f['server_cpu']:.2f} CPUs")
    if 2 in median:
        two, one = median[2], median[1]
        ratio = two["rate"] / one["rate"]
        met = ratio >= TARGET_RATIO and two["rate"] >= TARGET_CALLS and two["p99"] < TARGET_P99_MS
        print(f"2 processes / 1: {ratio:.2f}x | target >= {TARGET_RATIO}x, >= {TARGET_CALLS:.0f} calls/s, "
              f"p99 < {TARGET_P99_MS:.0f} ms: {'met' if met else 'NOT met'}")
    if 4 in median:
        print(f"4 processes / 1: {median[4]['rate'] / median[1]['rate']:.2f}x")
    if wrong:
        print(f"WRONG: {wrong} answers were not the workflow's succeeded status")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
