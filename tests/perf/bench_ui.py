"""Benchmark of the web dashboard: a real ``broker serve`` (SQLite, shipped settings) with many workflows.

- list: ``GET /ui/workflows`` (first page, newest first; and a page far down, by name) over 10,000 finished
  workflows of one user, each with a node: median and p95 ms (target: under 300 ms).
- sweep: ``GET /ui/workflows/<id>`` of a workflow whose sweep has 100,000 members (each with a body node):
  median ms (target: under 1 s). Both rows are written to the database before the server starts.
- follow: getStatusInfoForId's p99 on one keep-alive connection while running workflows produce events,
  first alone (the baseline), then with 100 open dashboards following them (half on the workflow page,
  polling its live feed every 2 s as the page's script does, half on its events page, polling the events
  feed); target: p99 under 50 ms with them. The events per second actually produced are printed (the
  workflows are chains of ``true``), and the server's CPU time per dashboard poll (from /proc: a figure the
  machine's other load does not change much, unlike latencies).

Every answer is checked (status 200 and what the page must hold); exit status 1 means a wrong result.

    PYTHONPATH=. python tests/perf/bench_ui.py [--tiny]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import zeep.exceptions  # noqa: E402

from tests.api.helpers import Server, add_users, p99, status_latencies  # noqa: E402
from tests.perf.bench_api import envelope  # noqa: E402

TARGET_LIST_MS, TARGET_SWEEP_MS, TARGET_P99_MS = 300.0, 1000.0, 50.0
#: seconds between two polls of a dashboard (the script's interval)
POLL = 2.0


def populate(url: str, workflows: int, members: int) -> str:
    """``workflows`` finished workflows of alice (one node each) and one with a sweep of ``members`` members;
    returns the sweep workflow's global id."""
    from sqlalchemy import insert, select

    from broker.persistence.db import make_engine
    from broker.persistence.models import Node, User, Workflow

    engine = make_engine(url)
    now = dt.datetime.now(dt.timezone.utc)
    try:
        with engine.begin() as c:
            alice = c.execute(select(User.id).where(User.name == "alice")).scalar_one()
            common = dict(owner_id=alice, descriptor="<workflow/>", descriptor_sha256="0" * 64, plan="{}",
                          event_level=2, priority=0, cancel_requested=False, event_seq=0)
            c.execute(insert(Workflow), [dict(common, global_id=f"wf-bench{i:06d}", name=f"bench-{i % 97}",
                                              state="succeeded" if i % 5 else "failed",
                                              submitted_at=now - dt.timedelta(seconds=i), finished_at=now)
                                         for i in range(workflows)])
            ids = dict(c.execute(select(Workflow.global_id, Workflow.id)).all())
            node = dict(kind="node", priority=0, attempt=1, retries=0, created_at=now, parent_id=None)
            c.execute(insert(Node), [dict(node, workflow_id=wid, path="a", template="a", state="succeeded")
                                     for wid in ids.values()])
            c.execute(insert(Workflow), [dict(common, global_id="wf-sweep", name="big-sweep", state="succeeded",
                                              submitted_at=now, finished_at=now)])
            sweep_wf = c.execute(select(Workflow.id).where(Workflow.global_id == "wf-sweep")).scalar_one()
            c.execute(insert(Node), [dict(node, workflow_id=sweep_wf, path="prepare", template="prepare",
                                          state="succeeded")])
            sweep_id = c.execute(insert(Node).values(**dict(node, kind="sweep", workflow_id=sweep_wf, path="scan",
                                                             template="scan", state="succeeded", members=members))
                                 .returning(Node.id)).scalar_one()
            base = sweep_id + 1
            c.execute(insert(Node), [dict(node, id=base + i, kind="member", workflow_id=sweep_wf, path=f"scan[{i}]",
                                          template="scan", parent_id=sweep_id, member_index=i,
                                          state="succeeded" if i % 10 else "failed") for i in range(members)])
            c.execute(insert(Node), [dict(node, workflow_id=sweep_wf, path=f"scan[{i}]/compute",
                                          template="scan/compute", parent_id=base + i,
                                          state="succeeded" if i % 10 else "failed") for i in range(members)])
    finally:
        engine.dispose()
    return "wf-sweep"


def timed_get(session, url: str, must: str, times: int) -> tuple[list[float], int]:
    """(ms of each GET, wrong answers)."""
    spent, wrong = [], 0
    for _ in range(times):
        t0 = time.perf_counter()
        answer = session.get(url)
        spent.append((time.perf_counter() - t0) * 1000)
        wrong += answer.status_code != 200 or must not in answer.text
    return spent, wrong


def login(base: str):
    import requests

    session = requests.Session()
    form = session.get(base + "/ui/login").text
    token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
    answer = session.post(base + "/ui/login", data={"user": "alice", "password": "alice-pw", "login_token": token},
                          allow_redirects=False)
    assert answer.status_code == 303, answer.text
    return session


def chain(n: int, name: str) -> str:
    nodes = "".join(f'<node id="c{i}">' + (f'<dependsOn node="c{i - 1}"/>' if i else "")
                    + '<payload type="sh">true</payload></node>' for i in range(n))
    return f'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="{name}">{nodes}</workflow>'


def follow(base: str, cookie: str, gids: list[str], dashboards: int) -> int:
    """Run ``dashboards`` followers until standard input closes; prints "ready" once all are connected and the
    number of failed polls at the end.

    This is a child process, so that the followers' threads do not share the measuring process's interpreter
    lock. Each dashboard polls its workflow's live feed and events feed every POLL seconds on its own keep-alive
    connection from its own loopback address (as browsers on different machines: the server's per-address cap
    is for one client), with the session cookie of one login (a login is a slow password hash on purpose).
    """
    import http.client
    import json
    import urllib.parse

    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    stop, errors, ready = threading.Event(), [], threading.Barrier(dashboards + 1)
    headers = {"Cookie": cookie}

    def get(connection: http.client.HTTPConnection, path: str) -> dict | None:
        connection.request("GET", path, headers=headers)
        answer = connection.getresponse()
        body = answer.read()
        return json.loads(body) if answer.status == 200 else None

    def dashboard(index: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60,
                                                source_address=(f"127.0.{1 + index // 250}.{1 + index % 250}", 0))
        gid = gids[index % len(gids)]
        after, events_after = 0, 0
        ready.wait()
        stop.wait(POLL * index / dashboards)  # spread, as dashboards opened at different times are
        while not stop.is_set():
            try:
                if index % 2 == 0:  # a workflow page: its graph's feed
                    answer = get(connection, f"/ui/workflows/{gid}/live?after={after}")
                    after = answer["last"] if answer is not None else after
                else:  # an events page: the events feed
                    answer = get(connection, f"/ui/workflows/{gid}/events.json?after={events_after}&level=PROGRESS")
                    if answer is not None and answer["events"]:
                        events_after = answer["events"][-1][0]
                if answer is None:
                    errors.append("not 200")
            except OSError as exc:
                errors.append(str(exc))
                connection.close()
            stop.wait(POLL)
        connection.close()

    threads = [threading.Thread(target=dashboard, args=(i,)) for i in range(dashboards)]
    for thread in threads:
        thread.start()
    ready.wait()
    print("ready", flush=True)
    sys.stdin.read()
    stop.set()
    for thread in threads:
        thread.join()
    print(len(errors), flush=True)
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_rate(pid: int, seconds: float) -> float:
    """CPU seconds per second a process uses over the next ``seconds``."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)


def event_count(server: Server) -> int:
    from sqlalchemy import func, select

    from broker.persistence.models import Event

    with server.sessions()() as s:
        return s.execute(select(func.count()).select_from(Event)).scalar_one()


def wait_ended(server: Server, n: int, deadline: float = 120.0) -> None:
    """Wait until ``n`` workflows of the bench's users have ended (polled, with a deadline)."""
    from sqlalchemy import func, select

    from broker.persistence.models import Workflow
    from broker.states import WORKFLOW_TERMINAL

    until = time.monotonic() + deadline
    while True:
        with server.sessions()() as s:
            live = s.execute(select(func.count()).select_from(Workflow).where(Workflow.name.like("live%"),
                                                                            Workflow.state.not_in(WORKFLOW_TERMINAL))
                             ).scalar_one()
        if live == 0:
            return
        if time.monotonic() > until:
            raise SystemExit(f"{live} of {n} cancelled chains did not end within {deadline:g} s")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    parser.add_argument("--follow", nargs="+", help=argparse.SUPPRESS)  # the followers' child process
    args = parser.parse_args()
    if args.follow:
        return follow(args.follow[0], args.follow[1], args.follow[3:], int(args.follow[2]))
    n_workflows, n_members = (300, 2_000) if args.tiny else (10_000, 100_000)
    dashboards, running, chain_len = (10, 1, 1000) if args.tiny else (100, 1, 3000)
    window = 2 * POLL if args.tiny else 5 * POLL
    calls = 60 if args.tiny else 600
    failures = 0
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as scratch:
        tmp = Path(scratch)
        url = f"sqlite:///{tmp / 'broker.db'}"
        from broker.persistence import migrate

        migrate.upgrade(url)
        add_users(url)
        t0 = time.perf_counter()
        sweep = populate(url, n_workflows, n_members)
        print(f"populated in {time.perf_counter() - t0:.1f} s")
        server = Server(url, tmp, {"BROKER_LOGGING_LEVEL": "WARNING"}).start()
        try:
            session = login(server.base)
            first, w1 = timed_get(session, server.base + "/ui/workflows", "bench-", 5 if args.tiny else 20)
            deep = session.get(server.base + "/ui/workflows", params={"sort": "name", "dir": "asc"})
            link = re.search(r'href="(/ui/workflows\?[^"]*after=[^"]*)"', deep.text)
            far, w2 = timed_get(session, server.base + link.group(1).replace("&amp;", "&") if link else "",
                                "bench-", 5 if args.tiny else 20) if link else ([0.0], 1)
            sweep_ms, w3 = timed_get(session, f"{server.base}/ui/workflows/{sweep}", "members", 3 if args.tiny else 10)
            if w1 or w2 or w3:
                print(f"WRONG: {w1 + w2 + w3} pages did not hold what they must")
                failures += 1
            gids = [server.core().submit({"workflowContent": chain(chain_len, f"live{i}")}).globalId
                    for i in range(running)]
            body = envelope(f"<c:getStatusInfoForId><c:globalId>{gids[0]}</c:globalId></c:getStatusInfoForId>")
            e0, t0 = event_count(server), time.perf_counter()
            alone = status_latencies(server, body, calls)
            alone_rate = (event_count(server) - e0) / (time.perf_counter() - t0)
            cookie = "broker_ui=" + session.cookies["broker_ui"]
            followers = subprocess.Popen([sys.executable, __file__, "--follow", server.base, cookie, str(dashboards),
                                          *gids], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert followers.stdout.readline().strip() == "ready"
            time.sleep(POLL)  # every dashboard polling
            e0, t0 = event_count(server), time.perf_counter()
            followed = status_latencies(server, body, calls)
            with_rate = (event_count(server) - e0) / (time.perf_counter() - t0)
            # the server's CPU per poll: its CPU rate over a window with dashboards (no status calls) minus its
            # rate over the same window without them, both with the engine idle (the chains cancelled and ended:
            # a chain running in one window and not in the other would count the engine's work as the polls')
            for gid in gids:
                try:
                    server.core().cancel(gid)
                except zeep.exceptions.Fault:
                    pass  # it has ended by itself
            wait_ended(server, len(gids))
            with_cpu = cpu_rate(server.process.pid, window)
            followers.stdin.close()
            failed = int(followers.stdout.readline() or "1")
            followers.wait(timeout=60)
            if failed:
                print(f"WRONG: {failed} dashboard polls failed")
                failures += 1
            without_cpu = cpu_rate(server.process.pid, window)
        finally:
            server.stop(expect=None)
            server.close()
    ms = [x * 1000 for x in followed]
    base_ms = [x * 1000 for x in alone]
    rows = [
        (f"workflows page, {n_workflows:,} workflows: median ms", f"{statistics.median(first):.0f}",
         f"< {TARGET_LIST_MS:g}", statistics.median(first) < TARGET_LIST_MS),
        ("  p95 ms / a later page by name, median ms", f"{sorted(first)[int(0.95 * (len(first) - 1))]:.0f} / "
                                                       f"{statistics.median(far):.0f}", "", None),
        (f"sweep of {n_members:,} members, workflow page: median ms", f"{statistics.median(sweep_ms):.0f}",
         f"< {TARGET_SWEEP_MS:g}", statistics.median(sweep_ms) < TARGET_SWEEP_MS),
        ("getStatusInfoForId p99 ms, no dashboard (baseline)", f"{p99(base_ms):.1f}", "", None),
        (f"getStatusInfoForId p99 ms, {dashboards} dashboards", f"{p99(ms):.1f} ({p99(ms) / p99(base_ms):.1f}x)",
         f"< {TARGET_P99_MS:g}", p99(ms) < TARGET_P99_MS),
        ("events/s produced: alone / with dashboards", f"{alone_rate:.0f} / {with_rate:.0f}", "", None),
        ("server CPU ms per dashboard poll", f"{(with_cpu - without_cpu) * 1000 / (dashboards / POLL):.2f}", "",
         None),
    ]
    print(f"\nbench_ui{' --tiny' if args.tiny else ''}: {os.cpu_count()} CPUs")
    print(f"{'measure':55} {'result':>16} {'target':>8}  verdict")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:55} {value:>16} {target:>8}  {verdict}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
