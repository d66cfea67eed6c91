"""Benchmark: parse + validate, expand and persist a 100,000-node workflow; prints a table of figures.

    python tests/perf/bench_description.py [--tiny] [--nodes N] [--postgres URL] [--repeat R]

Two generated documents (written to a temporary file): a flat workflow of N nodes, each depending on one of
the few nodes before it (one edge per node, two for every tenth), and a workflow with one sweep whose
``<range>`` parameter has N values and whose body is one node. Measured in this one process, each next to
a plain baseline run here too:

* load_description_file of the flat document (hardened parse, XSD, build, checks) vs a bare
  ``lxml.etree.fromstring`` of the same bytes, after a warm-up that compiles the XSD,
* loading the sweep document and expanding the sweep (broker.description.expansion.expand) to N members,
* submit_workflow of the flat spec in one transaction on SQLite (a migrated file database) and on
  PostgreSQL, vs a plain ``executemany`` INSERT of N one-column rows into a bare table of the same database.

Every time is the best of R runs (``--repeat``, default 3; each persist run stores one more workflow).

Memory, three ways: the peak RSS (VmHWM) of a fresh child process that only loads the flat document and
persists it on SQLite (what the 500 MB target is about); this process's peak RSS after each phase; and, in
a second pass with tracemalloc on (no time is taken then: it slows everything), the peak of Python
allocations per phase.

PostgreSQL: ``--postgres URL``, else ``BROKER_TEST_POSTGRES_URL`` (a user that may CREATE DATABASE), else a
throwaway cluster (tests/fixtures/database.py; fsync off). Without any it prints "skipped", and fails when
CI=true. Exit status: 0 when every result is correct, whatever the timings (a MISS is a figure, not a
failure); 1 when a count is wrong or a phase fails. tests/run runs this with --tiny (200 nodes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `broker` and `tests` importable from the checkout
    sys.path.insert(0, str(REPO))

from lxml import etree  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.description.checks import expanded_node_count  # noqa: E402
from broker.description.expansion import expand  # noqa: E402
from broker.description.load import (load_description, load_description_file, read_description_file,  # noqa: E402
                                     spec_stats)

NS = "urn:workflow-broker:workflow:1.0"
#: the issue's targets, for 100,000 nodes (time targets scale linearly with --nodes)
TARGET_NODES = 100_000
PARSE_TARGET_S = 2.0
PERSIST_TARGET_S = 10.0
MEMORY_TARGET_MB = 500.0
TINY_NODES = 200


class WrongResult(Exception):
    """Raised when a phase produced wrong counts: the benchmark then exits 1."""


def expect(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise WrongResult(f"{what}: got {got}, expected {want}")


# ----------------------------------------------------------------------------------------------- documents

def parents_of(i: int) -> tuple[int, ...]:
    """Node i's parents: one of the four nodes before it, plus the one right before for every tenth."""
    if i == 0:
        return ()
    first = max(0, i - 1 - (i * 7919) % 4)
    return (first, i - 1) if i % 10 == 0 and first != i - 1 else (first,)


def flat_document(n: int) -> tuple[bytes, int]:
    """A flat n-node workflow, and its number of edges."""
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<workflow xmlns="{NS}" name="flat-{n}">\n']
    edges = 0
    for i in range(n):
        parents = parents_of(i)
        edges += len(parents)
        depends = "".join(f'<dependsOn node="n{p}"/>' for p in parents)
        parts.append(f'  <node id="n{i}">{depends}<payload type="sh">echo step {i}</payload></node>\n')
    parts.append("</workflow>\n")
    return "".join(parts).encode("utf-8"), edges


def sweep_document(n: int) -> bytes:
    """A workflow with one sweep of n members (a range parameter) whose body is one node."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<workflow xmlns="{NS}" name="sweep-{n}">\n'
            f'  <sweep id="scan"><param name="x"><range from="0" to="{n - 1}"/></param>\n'
            '    <body><node id="run"><payload type="sh">echo "$WB_PARAM_x"</payload></node></body>\n'
            "  </sweep>\n</workflow>\n").encode("utf-8")


def bench_settings(n: int) -> Settings:
    """The defaults, with the limits raised when --nodes goes past them."""
    limits = Settings().limits
    return Settings().replace("limits", max_nodes=max(limits.max_nodes, 2 * n),
                              max_members=max(limits.max_members, n), max_values=max(limits.max_values, n),
                              max_document_bytes=max(limits.max_document_bytes, 400 * n))


# ------------------------------------------------------------------------------------------ measurements

def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None  # free the previous result before the next run
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def rss_mb() -> float:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def hwm_mb() -> float:
    """This process's peak resident set from /proc (VmHWM; unlike ru_maxrss, it starts afresh at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return rss_mb()


def traced_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak of Python allocations while ``fn`` runs (tracemalloc: libxml2's own allocations are not seen)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def migrated_engine(url: str):
    from broker.persistence import migrate
    from broker.persistence.db import make_engine

    migrate.upgrade(url)
    return make_engine(url)


def persister(engine, spec, descriptor: str) -> Callable[[], int]:
    """A call that stores ``spec`` with submit_workflow in one transaction and returns the workflow's id."""
    from broker.persistence.db import session_factory
    from broker.persistence.repository import ensure_user, get_user, submit_workflow

    sessions = session_factory(engine)
    with sessions.begin() as session:
        ensure_user(session, "bench")

    def run() -> int:
        with sessions.begin() as session:
            return submit_workflow(session, spec, descriptor=descriptor, owner=get_user(session, "bench")).id

    return run


def stored_counts(engine, workflow_id: int) -> tuple[int, int]:
    """(nodes, dependencies) stored for one workflow."""
    from sqlalchemy import func, select

    from broker.persistence.repository import DEPENDENCIES, NODES

    with engine.connect() as connection:
        nodes = connection.scalar(select(func.count()).select_from(NODES).where(NODES.c.workflow_id == workflow_id))
        edges = connection.scalar(select(func.count()).select_from(DEPENDENCIES).join(
            NODES, NODES.c.id == DEPENDENCIES.c.child_id).where(NODES.c.workflow_id == workflow_id))
    return nodes, edges


def bare_insert(engine, n: int, repeat: int) -> float:
    """Best seconds of ``repeat`` plain executemany INSERTs of n one-column rows into a new bare table."""
    rows = [(f"n{i}",) for i in range(n)]
    if engine.dialect.name == "sqlite":
        connection = sqlite3.connect(engine.url.database)
        connection.execute("PRAGMA synchronous=FULL")  # as the broker's engine sets it by default
        insert, create = "INSERT INTO {table} (path) VALUES (?)", "id INTEGER PRIMARY KEY, path TEXT NOT NULL"
    else:
        import psycopg

        connection = psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False))
        insert, create = "INSERT INTO {table} (path) VALUES (%s)", "id bigserial PRIMARY KEY, path text NOT NULL"
    try:
        best = float("inf")
        for run in range(repeat):
            table = f"bench_bare_{run}"
            connection.execute(f"CREATE TABLE {table} ({create})")
            connection.commit()
            start = time.perf_counter()
            connection.cursor().executemany(insert.format(table=table), rows)
            connection.commit()
            best = min(best, time.perf_counter() - start)
            expect("bare insert rows", connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0], n)
        return best
    finally:
        connection.close()


@dataclass
class Database:
    label: str
    url: str
    #: durability and version, printed under the table
    note: str
    cleanup: Callable[[], None] = lambda: None


def postgres_database(url: str | None) -> Database | None:
    """A fresh database on the given server, BROKER_TEST_POSTGRES_URL or a throwaway cluster; None if none."""
    import psycopg

    from tests.fixtures.database import POSTGRES_URL_ENV, PostgresServer, start_throwaway_cluster

    url = url or os.environ.get(POSTGRES_URL_ENV)
    try:
        server = PostgresServer(url) if url else start_throwaway_cluster()
        name = server.create_database()
    except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        print(f"PostgreSQL unavailable: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        return None

    def cleanup() -> None:
        server.drop_database(name)
        server.close()

    note = "throwaway cluster, fsync=off synchronous_commit=off" if server.cluster_dir else "given server"
    return Database("PostgreSQL", server.url(name), note, cleanup)


def child_peak_rss(xml: Path, url: str, n: int) -> dict[str, float]:
    """In a fresh process: load the flat document and persist it; that process's RSS before and at its peak."""
    command = [sys.executable, __file__, "--child", str(xml), url, "--nodes", str(n)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise WrongResult(f"child process failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


def child(xml: Path, url: str, n: int) -> int:
    """The child of :func:`child_peak_rss`: the broker's path from a file to stored rows, nothing else."""
    from broker.persistence.db import make_engine

    engine = make_engine(url)
    persister(engine, None, "")  # imports the ORM and creates the user before the baseline is taken
    before = hwm_mb()
    data = read_description_file(xml, bench_settings(n))
    spec = load_description(data, bench_settings(n), filename=str(xml))
    workflow_id = persister(engine, spec, data.decode("utf-8"))()
    expect("child stored nodes", stored_counts(engine, workflow_id)[0], n)
    print(json.dumps({"before": before, "peak": hwm_mb()}))
    return 0


# ------------------------------------------------------------------------------------------------- output

@dataclass
class Report:
    rows: list[list[str]] = field(default_factory=lambda: [["measure", "figure", "baseline", "ratio", "target",
                                                            "result"]])
    notes: list[str] = field(default_factory=list)
    #: phase -> (this process's peak RSS after it, tracemalloc peak during it)
    memory: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, measure: str, figure: str, baseline: str = "", ratio: str = "", target: str = "",
            result: str = "") -> None:
        self.rows.append([measure, figure, baseline, ratio, target, result])

    def timing(self, measure: str, seconds: float, target: float, baseline: float, baseline_name: str) -> None:
        self.add(measure, f"{seconds:.3f} s", f"{baseline_name} {baseline:.3f} s", f"{seconds / baseline:.1f}x",
                 f"< {target:.3g} s", "PASS" if seconds < target else "MISS")

    def print(self) -> None:
        widths = [max(len(row[i]) for row in self.rows) for i in range(len(self.rows[0]))]
        for row in self.rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        print()
        for note in self.notes:
            print(note)
        print()
        print("memory by phase, this process: RSS = peak resident set after the phase (ru_maxrss, cumulative);")
        print("  tracemalloc = peak of Python allocations during the phase, in a second untimed pass (the lxml")
        print("  tree lives in libxml2's allocations, which tracemalloc does not see; parse from bytes in memory)")
        width = max(len(phase) for phase in self.memory)
        for phase, (rss, traced) in self.memory.items():
            shown = f"{traced:5.0f} MB" if traced is not None else "    -"
            print(f"  {phase.ljust(width)}  RSS {rss:5.0f} MB  tracemalloc {shown}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"nproc {len(os.sched_getaffinity(0))} ({cpu}), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, lxml {etree.__version__}, SQLite {sqlite3.sqlite_version}")


# --------------------------------------------------------------------------------------------------- main

def run(n: int, repeat: int, postgres_url: str | None, memory_pass: bool) -> int:
    scale, settings, report = n / TARGET_NODES, bench_settings(n), Report()
    with tempfile.TemporaryDirectory(prefix="bench-description-") as tmp:
        flat_path, sweep_path = Path(tmp) / "flat.xml", Path(tmp) / "sweep.xml"
        flat_bytes, edges = flat_document(n)
        flat_path.write_bytes(flat_bytes)
        sweep_path.write_bytes(sweep_document(n))
        print(f"description benchmark, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\nmachine: {machine()}")
        print(f"flat workflow: {n:,} nodes, {edges:,} edges, {len(flat_bytes) / 1e6:.1f} MB; sweep: one range "
              f"parameter of {n:,} values; every time: best of {repeat} runs\n")
        load_description_file(sweep_path, bench_settings(10))  # warm-up: compiles the XSD, once per process

        # 1. the flat document, vs a bare parse of the same bytes (the tree freed inside both timings)
        bare_s, _ = timed(lambda: len(etree.fromstring(flat_path.read_bytes())), repeat)
        load_s, spec = timed(lambda: load_description_file(flat_path, settings), repeat)
        stats = spec_stats(spec)
        expect("flat spec (nodes, sweeps, expanded)", (stats.nodes, stats.sweeps, stats.expanded), (n, 0, n))
        expect("flat spec edges", sum(len(node.depends) for node in spec.nodes), edges)
        report.timing(f"parse+XSD+build+checks, {n:,} nodes", load_s, PARSE_TARGET_S * scale, bare_s, "bare parse")
        report.memory["parse+validate flat"] = [rss_mb(), None]

        # 2. the sweep document, then the pure expansion
        sweep_s, sweep_spec = timed(lambda: load_description_file(sweep_path, settings), repeat)
        expect("sweep document expanded count", expanded_node_count(sweep_spec), n + 1)
        sweep = sweep_spec.nodes[0]
        values = {p.name: p.values for p in sweep.params}
        expand_s, members = timed(lambda: expand(sweep, values, max_members=settings.limits.max_members), repeat)
        expect("sweep members", len(members), n)
        expect("last member", (members[-1].path, members[-1].bindings), (f"scan[{n - 1}]", (("x", str(n - 1)),)))
        del members
        report.add("validate sweep document", f"{sweep_s:.3f} s")
        report.add(f"expand sweep to {n:,} members", f"{expand_s:.3f} s")
        report.memory["expand sweep"] = [rss_mb(), None]

        # 3. persist, vs a bare executemany into the same database
        databases = [Database("SQLite", f"sqlite:///{Path(tmp) / 'broker.db'}",
                              "file database, WAL, synchronous=full (the default)")]
        postgres = postgres_database(postgres_url)
        if postgres is not None:
            databases.append(postgres)
        elif os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise WrongResult("PostgreSQL is required in CI but is not available")
        descriptor = flat_bytes.decode("utf-8")
        try:
            for database in databases:
                engine = migrated_engine(database.url)
                try:
                    # each run stores one more workflow: the later ones meet a bigger table, as in service
                    persist_s, workflow_id = timed(persister(engine, spec, descriptor), repeat)
                    expect(f"{database.label} stored (nodes, edges)", stored_counts(engine, workflow_id), (n, edges))
                    bare_s = bare_insert(engine, n, repeat)
                    if engine.dialect.name == "postgresql":
                        version = ".".join(map(str, engine.dialect.server_version_info or ()))
                        database.note += f", PostgreSQL {version}"
                finally:
                    engine.dispose()
                report.timing(f"persist on {database.label}", persist_s, PERSIST_TARGET_S * scale, bare_s,
                              "bare insert")
                report.notes.append(f"{database.label}: {database.note}")
                report.memory[f"persist on {database.label}"] = [rss_mb(), None]
        finally:
            for database in databases:
                database.cleanup()
        if postgres is None:
            report.add("persist on PostgreSQL", "skipped")

        # 4. memory: a fresh process for the target, then the tracemalloc pass (untimed)
        child_url = f"sqlite:///{Path(tmp) / 'child.db'}"
        migrated_engine(child_url).dispose()
        rss = child_peak_rss(flat_path, child_url, n)
        report.add("peak RSS, fresh process: load + persist", f"{rss['peak']:.0f} MB",
                   f"before loading {rss['before']:.0f} MB", target=f"< {MEMORY_TARGET_MB:g} MB",
                   result="PASS" if rss["peak"] < MEMORY_TARGET_MB else "MISS")
        report.add("peak RSS, this whole benchmark", f"{rss_mb():.0f} MB")
        if memory_pass:
            report.memory["parse+validate flat"][1] = traced_peak_mb(lambda: load_description(flat_bytes, settings))
            report.memory["expand sweep"][1] = traced_peak_mb(
                lambda: expand(sweep, values, max_members=settings.limits.max_members))
            engine = migrated_engine(f"sqlite:///{Path(tmp) / 'traced.db'}")
            try:
                report.memory["persist on SQLite"][1] = traced_peak_mb(persister(engine, spec, descriptor))
            finally:
                engine.dispose()

    scaled = "" if n == TARGET_NODES else f"; time targets scaled to {n:,} nodes"
    report.notes.insert(0, f"targets for {TARGET_NODES:,} nodes: parse+validate < {PARSE_TARGET_S:g} s, persist "
                           f"< {PERSIST_TARGET_S:g} s, memory < {MEMORY_TARGET_MB:g} MB{scaled}")
    report.print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_NODES} nodes, one run: the smoke test of CI")
    parser.add_argument("--nodes", type=int, default=TARGET_NODES, help="nodes and sweep members (%(default)s)")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server whose user may CREATE DATABASE")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timing, best kept (3)")
    parser.add_argument("--no-memory-pass", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--child", nargs=2, metavar=("XML", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nodes < 2 or args.repeat < 1:
        parser.error("--nodes must be at least 2 and --repeat at least 1")
    try:
        if args.child:
            return child(Path(args.child[0]), args.child[1], args.nodes)
        n = TINY_NODES if args.tiny else args.nodes
        return run(n, 1 if args.tiny else args.repeat, args.postgres, not args.no_memory_pass)
    except WrongResult as exc:
        print(f"WRONG RESULT: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
