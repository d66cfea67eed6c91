"""Benchmark of the engine: whole `broker run` processes against a plain thread-pool baseline.

Workloads (trivial payloads, at most 4 nodes at once, the shipped configuration: SQLite with
synchronous=full, every transition and event persisted; the in-process bus ``memory://``, so that the
outbox is written and published as with a real bus: without a bus no outbox rows are written):

- W0: one node on a migrated database (start-up);
- W1: a chain of 100 (also the hand-off latency from a parent's end to its child's start);
- W2: a fan 1 -> 500 -> 1, also with ``[hosts] local_agent = false`` (a wb-run.sh wrapper per payload instead
  of the resident agent, the default);
- W3: 10 layers of 50, every node depending on every node of the layer before (22,500 edges);
- S: one parameterized node expanding to N members (memory of a big lazy expansion; --sweep N).

W1 to W3 run again on PostgreSQL (``--postgres URL``, else ``BROKER_TEST_POSTGRES_URL``, else a throwaway
cluster with its durability on: fsync and synchronous_commit, as SQLite's synchronous=full), each figure
beside SQLite's (issue 18's target: within 1.5 times).

The baseline is a 30-line thread pool of 4 running the same DAG with subprocess.run, as issue 18 defines
it: in a Python process of its own, timed whole like `broker run`, and running each node's payload with the
interpreter the broker gives it (``bash <payload file>``), so that both pay the same process per node. The
floor beside it is the former baseline: the pool inside this process running ``true``, which pays neither
an interpreter's start nor bash's.
Each figure is the median of --repeat runs (W0: of at least 7, its best printed too), after an untimed
warm-up; the broker's and the libraries' bytecode is cached under --dir (PYTHONPYCACHEPREFIX), as in an
installed broker, whatever PYTHONDONTWRITEBYTECODE says. After each run the benchmark checks the database:
every node succeeded, and the event and outbox rows are what the run must have written. Exit status 1
means a wrong result, never a slow one.

CPU is given two ways per node: the broker's and its children's (``wait4``: under the agent, not the payloads,
which are the agent's children), and the whole machine's (``/proc/stat`` from the start to the end of the run:
the broker, the agent, the payloads, and whatever else runs, which on a quiet machine is little).

    python tests/perf/bench_engine.py [--tiny] [--repeat 3] [--sweep 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make `tests` importable from the checkout
    sys.path.insert(0, str(ROOT))
from tests.perf.baseline_pool import SLOTS, baseline  # noqa: E402
BROKER = [sys.executable, "-m", "broker.cli"]
NS = "urn:workflow-broker:workflow:1.0"
#: runs of W0 at least, whatever --repeat: a start-up is short and its spread wide (its best is printed too)
W0_RUNS = 7


# ------------------------------------------------------------------------------------------ workloads

def dag_chain(n: int) -> dict[str, list[str]]:
    return {f"c{i}": [f"c{i - 1}"] if i else [] for i in range(n)}


def dag_fan(n: int) -> dict[str, list[str]]:
    dag = {"a": []}
    dag.update({f"m{i}": ["a"] for i in range(n)})
    dag["z"] = [f"m{i}" for i in range(n)]
    return dag


def dag_layers(layers: int, width: int) -> dict[str, list[str]]:
    dag: dict[str, list[str]] = {}
    for layer in range(layers):
        for i in range(width):
            dag[f"l{layer}_{i}"] = [f"l{layer - 1}_{j}" for j in range(width)] if layer else []
    return dag


def document(name: str, dag: dict[str, list[str]], payload: str = "true") -> str:
    nodes = []
    for node, deps in dag.items():
        depends = "".join(f'<dependsOn node="{d}"/>' for d in deps)
        nodes.append(f'<node id="{node}">{depends}<payload type="bash">{payload}</payload></node>')
    return f'<workflow xmlns="{NS}" name="{name}">' + "".join(nodes) + "</workflow>"


def sweep_document(members: int) -> str:
    return (f'<workflow xmlns="{NS}" name="sweep"><sweep id="s"><param name="i">'
            f'<range from="1" to="{members}"/></param><body><node id="n"><payload type="sh">true</payload>'
            f'</node></body></sweep></workflow>')


# ------------------------------------------------------------------------------------------- baseline

def baseline_process(dag: dict[str, list[str]], workdir: Path, payload: str = "true") -> float:
    """Seconds of a whole Python process running :func:`baseline` with each node's payload under bash, as the
    broker runs it (the payload's text in a file, ``bash FILE``)."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    (run_dir / "dag.json").write_text(json.dumps(dag))
    (run_dir / "payload").write_text(payload + "\n")
    started = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).with_name("baseline_pool.py")), str(run_dir)], check=True)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------- broker

def peak_anonymous(pid: int, stop: threading.Event, out: list[int]) -> None:
    """Sample the process's anonymous resident memory (its heap: RSS without the pages of mapped files such
    as the memory-mapped SQLite database, which the kernel can drop at will) until ``stop``; max in out[0]."""
    while not stop.wait(0.1):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        out[0] = max(out[0], int(line.split()[1]))
        except OSError:
            return


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent so far, all CPUs (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def broker_run(doc: str, workdir: Path, env: dict[str, str], anon: list[int] | None = None,
               server: Any = None) -> tuple[float, int, str, float, float]:
    """Run `broker run` on a fresh migrated database; returns (wall seconds, peak RSS KiB, database URL, CPU
    seconds of the broker and the payloads it waited for, CPU seconds of the whole machine meanwhile).

    With ``anon`` (a one-element list), also samples the peak anonymous memory (KiB) into it. ``server``: a
    PostgreSQL server of tests.fixtures.database to make the database on; None: a SQLite file."""
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    db = server.url(server.create_database()) if server is not None else f"sqlite:///{run_dir / 'broker.db'}"
    subprocess.run(BROKER + ["db", "upgrade", "--db", db], check=True, env=env, stdout=subprocess.DEVNULL)
    path = run_dir / "wf.xml"
    path.write_text(doc)
    started, machine = time.perf_counter(), machine_cpu()
    with open(run_dir / "stderr", "wb") as err_file:
        proc = subprocess.Popen(BROKER + ["run", str(path), "--db", db, "--workdir",
                                          str(run_dir / "work")], env=env, stdout=subprocess.DEVNULL,
                                stderr=err_file)
        stop = threading.Event()
        if anon is not None:
            sampler = threading.Thread(target=peak_anonymous, args=(proc.pid, stop, anon))
            sampler.start()
        # wait4 gives the child's own peak RSS, which Popen.wait would not
        _, _, rusage = os.wait4(proc.pid, 0)
        stop.set()
        proc.returncode = 0
    wall, machine = time.perf_counter() - started, machine_cpu() - machine
    err = (run_dir / "stderr").read_text(errors="replace")
    with connect(db) as con:
        status = con.execute("SELECT state FROM workflows").fetchone()
    if status is None or status[0] != "succeeded":
        raise SystemExit(f"broker run did not succeed (state {status}): {err[-2000:]}")
    return wall, rusage.ru_maxrss, db, rusage.ru_utime + rusage.ru_stime, machine


def connect(db: str) -> Any:
    """A DB-API connection to a run's database (a context manager that closes it)."""
    if db.startswith("sqlite:///"):
        return contextlib.closing(sqlite3.connect(db.removeprefix("sqlite:///")))
    import psycopg
    from sqlalchemy.engine import make_url

    return psycopg.connect(make_url(db).set(drivername="postgresql").render_as_string(hide_password=False))


def check_rows(db: str, nodes: int) -> tuple[int, int]:
    """Every node succeeded and the events/outbox are complete; returns (events, outbox rows)."""
    with connect(db) as con:
        return _check_rows(con, nodes)


def _check_rows(con: Any, nodes: int) -> tuple[int, int]:
    states = dict(con.execute("SELECT state, count(*) FROM nodes WHERE kind = 'node' GROUP BY state"))
    if states != {"succeeded": nodes}:
        raise SystemExit(f"wrong node states: {states}")
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    transitions = con.execute("SELECT count(*) FROM events WHERE type = 'NODE_STATE'").fetchone()[0]
    # ready, queued, running, succeeded for every node; plus submitted and at least two workflow states
    if transitions < 4 * nodes:
        raise SystemExit(f"only {transitions} state events for {nodes} nodes")
    # a workflow's events within its level (STATUS) go to two topics; the run's SERVICE events to one
    published = con.execute("SELECT count(*) FROM events WHERE level <= 2 AND workflow_id IS NOT NULL").fetchone()[0]
    service = con.execute("SELECT count(*) FROM events WHERE type = 'SERVICE'").fetchone()[0]
    outbox = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
    if service != 2 or outbox != 2 * published + service:
        raise SystemExit(f"{outbox} outbox rows for {published} published events (expected 2 each) and {service} "
                         "SERVICE events (expected 2, 1 row each)")
    unsent = con.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
    if unsent:
        raise SystemExit(f"{unsent} outbox rows unsent after broker run exited (it waits for them to drain)")
    seqs = [r[0] for r in con.execute("SELECT seq FROM events WHERE workflow_id IS NOT NULL ORDER BY id")]
    if seqs != list(range(1, len(seqs) + 1)):
        raise SystemExit("event sequence numbers are not 1..N in commit order")
    return events, outbox


def handoff(n: int, workdir: Path, env: dict[str, str], name: str = "handoff") -> tuple[float, float]:
    """p50/p99 seconds from a parent payload's end to its child payload's start, on a chain of n."""
    log = workdir / f"{name}.log"
    payload = f'echo "$WB_NODE_PATH $EPOCHREALTIME" &gt;&gt; {log}'
    broker_run(document("w1-handoff", dag_chain(n), payload), workdir, env)  # its CPU is not reported
    times = dict(line.split() for line in log.read_text().splitlines())
    gaps = sorted(float(times[f"c{i}"]) - float(times[f"c{i - 1}"]) for i in range(1, n))
    return statistics.median(gaps), gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]


def postgres_rows(url: str | None, workloads: list[tuple[str, dict[str, list[str]], dict[str, str]]],
                  repeat: int, workdir: Path) -> list[tuple[str, int, float, float]]:
    """W1 to W3 on PostgreSQL: (name, nodes, median wall s, median CPU ms/node) each; [] without a server
    (an error in CI)."""
    import psycopg

    from tests.fixtures.database import POSTGRES_URL_ENV, PostgresServer, start_throwaway_cluster

    url = url or os.environ.get(POSTGRES_URL_ENV)
    try:
        server = PostgresServer(url) if url else start_throwaway_cluster(durable=True)
    except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise SystemExit(f"PostgreSQL is required in CI: {exc}") from None
        print(f"PostgreSQL unavailable, its rows are left out: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return []
    out = []
    try:
        for name, dag, run_env in workloads:
            if name.split()[0] not in ("W1", "W2", "W3") or "wb-run.sh" in name:
                continue
            walls, cpus = [], []
            for _ in range(repeat):
                wall, _, db, cpu, _ = broker_run(document(name.split()[0], dag), workdir, run_env, server=server)
                check_rows(db, len(dag))
                walls.append(wall)
                cpus.append(cpu)
            out.append((name, len(dag), statistics.median(walls), 1000 * statistics.median(cpus) / len(dag)))
    finally:
        server.close()
    return out


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a quick run at small sizes (CI)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sweep", type=int, default=0, help="also run a sweep of N members (memory)")
    parser.add_argument("--dir", help="where runs keep their databases and work directories (default: var/)")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server whose user may CREATE DATABASE "
                        "(default: BROKER_TEST_POSTGRES_URL, else a throwaway cluster with durability on)")
    args = parser.parse_args()
    scale = 10 if args.tiny else 1
    repeat = 1 if args.tiny else args.repeat
    env = dict(os.environ, BROKER_ENGINE_MAX_IN_FLIGHT=str(SLOTS), PYTHONPATH=str(ROOT),
               BROKER_EVENTS_URL="memory://bench-engine")
    env.pop("BROKER_CONFIG", None)
    # work directories go where the broker keeps them by default (the state dir's file system), not /tmp,
    # which on long-lived test machines can be an order of magnitude slower for file creation
    scratch = Path(args.dir or ROOT / "var")
    scratch.mkdir(parents=True, exist_ok=True)
    # bytecode cached as in an installed broker (pip compiles it at install): a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every broker module from source at each start (0.12-0.15 s of W0)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "broker")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wrapper_env = dict(env, BROKER_HOSTS_LOCAL_AGENT="false")
    workloads = [
        ("W0 one node", {"n0": []}, env),
        ("W1 chain of 100", dag_chain(100 // scale), env),
        ("W2 fan 1-500-1", dag_fan(500 // scale), env),
        # the same fan as before the resident agent: wb-run.sh and the payload, two processes per payload
        ("W2 with wb-run.sh", dag_fan(500 // scale), wrapper_env),
        ("W3 10 x 50 layers", dag_layers(10 // (2 if args.tiny else 1), 50 // scale), env),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-", dir=scratch) as tmp:
        workdir = Path(tmp)
        # untimed: the libraries' bytecode too is cached under the prefix by the first run
        broker_run(document("warm-up", {"n0": []}), workdir, env)
        for name, dag, run_env in workloads:
            walls, rss, base, floor, cpus, machines = [], [], [], [], [], []
            for _ in range(max(repeat, W0_RUNS) if name.startswith("W0") else repeat):
                wall, peak, db, cpu, machine = broker_run(document(name.split()[0], dag), workdir, run_env)
                walls.append(wall)
                cpus.append(cpu)
                machines.append(machine)
                rss.append(peak)
                events, outbox = check_rows(db, len(dag))
                base.append(baseline_process(dag, workdir))
                floor.append(baseline(dag))
            if name.startswith("W0"):
                start_up = (min(walls), statistics.median(walls), len(walls))
            wall, b, f = statistics.median(walls), statistics.median(base), statistics.median(floor)
            per_node = [1000 * statistics.median(cpus) / len(dag), 1000 * statistics.median(machines) / len(dag)]
            rows.append((name, len(dag), wall, len(dag) / wall, max(rss) / 1024, b, wall / b, f, wall / f, events,
                         outbox, *per_node))
        on_postgres = postgres_rows(args.postgres, workloads, repeat, workdir)
        p50, p99 = handoff(100 // scale, workdir, env)
        wrapper_p50, wrapper_p99 = handoff(100 // scale, workdir, wrapper_env, "handoff-wrapper")
        sweep = None
        if args.sweep:
            anon = [0]
            wall, peak, db, _, _ = broker_run(sweep_document(args.sweep), workdir, env, anon)
            check_rows(db, args.sweep)
            sweep = (args.sweep, wall, peak / 1024, anon[0] / 1024)
    print(f"bench_engine {date.today()} | {os.cpu_count()} CPUs | Python {platform.python_version()} | "
          f"{SLOTS} slots | median of {repeat}")
    print(f"{'workload':<20}{'nodes':>7}{'wall s':>9}{'nodes/s':>9}{'peak MB':>9}{'base s':>8}{'ratio':>7}"
          f"{'floor s':>9}{'ratio':>7}{'events':>8}{'outbox':>8}{'CPU ms/node':>12}{'machine':>9}")
    for name, n, wall, rate, mb, b, ratio, f, to_floor, events, outbox, cpu, machine in rows:
        print(f"{name:<20}{n:>7}{wall:>9.3f}{rate:>9.0f}{mb:>9.0f}{b:>8.3f}{ratio:>6.1f}x{f:>9.3f}{to_floor:>6.1f}x"
              f"{events:>8}{outbox:>8}{cpu:>12.1f}{machine:>9.1f}")
    print("base: the thread pool in a Python process of its own, each payload under bash (issue 18's baseline); "
          "floor: the pool in this process running `true` (no interpreter start, no bash)")
    print("CPU ms/node: the broker's and its children's user + system time, per node: under the agent (the "
          "default), the broker's alone (the payloads are the agent's children); with wb-run.sh, the wrappers' and "
          "payloads' too; machine: the whole machine's CPU during the run, per node (broker, agent, payloads, "
          "and anything else running)")
    print(f"W0 start-up: best {start_up[0]:.3f} s, median {start_up[1]:.3f} s of {start_up[2]} runs (target "
          "< 0.35 s)")
    print(f"hand-off on the chain: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; with wb-run.sh: p50 "
          f"{wrapper_p50 * 1000:.1f} ms, p99 {wrapper_p99 * 1000:.1f} ms")
    if on_postgres:
        walls = {row[0]: row[2] for row in rows}
        print(f"\n{'on PostgreSQL':<20}{'nodes':>7}{'wall s':>9}{'SQLite s':>10}{'ratio':>7}{'CPU ms/node':>12}"
              "  target")
        for name, n, wall, cpu in on_postgres:
            ratio = wall / walls[name]
            print(f"{name:<20}{n:>7}{wall:>9.3f}{walls[name]:>10.3f}{ratio:>6.2f}x{cpu:>12.1f}  <= 1.5x: "
                  f"{'met' if ratio <= 1.5 else 'missed'}")
        print("PostgreSQL with fsync and synchronous_commit on; CPU ms/node is the broker's and the payloads' (the "
              "server's own CPU is not counted)")
    if sweep:
        print(f"sweep of {sweep[0]} members: {sweep[1]:.1f} s ({sweep[0] / sweep[1]:.0f} nodes/s), peak RSS "
              f"{sweep[2]:.0f} MB, of which anonymous (heap) at most {sweep[3]:.0f} MB; the rest are file pages "
              "(the memory-mapped database, shared libraries)")
    print(json.dumps({"rows": rows, "handoff_ms": [p50 * 1000, p99 * 1000],
                      "handoff_wrapper_ms": [wrapper_p50 * 1000, wrapper_p99 * 1000], "sweep": sweep,
                      "postgres": on_postgres}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
