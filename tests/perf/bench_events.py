"""Benchmark of the outbox relay against a real ActiveMQ: throughput, commit-to-receipt lag, backlog drain.

Every message is persistent and confirmed by a RECEIPT, and a durable subscriber (online, consuming) holds
the all-events topic, so ActiveMQ stores each message before it answers. The database is SQLite with the
shipped settings (synchronous=full); events are written as the engine writes them (one event row plus its
two outbox rows, /topic/broker.events and /topic/broker.user.<user>), in commits of ~20 ms of events.

- ceiling: raw stomp.py publishing the same messages to the same broker, with the same receipt window;
- lag: a producer commits --lag-rate events/s (the target rate) for --seconds while the relay runs: the
  time from each commit to the bus's receipt of its window (p50, p99);
- capacity: the same at --rate events/s, more than the relay can take: events/s confirmed;
- backlog: a --backlog-seconds outage at 100 events/s (the rows inserted directly, relay stopped), then the
  relay started: the time until every row is marked sent.

Targets: >= 500 events/s; lag p99 < 1 s; a 60 s outage drained in < 30 s (scaled with --tiny). A real bus
outage (ActiveMQ stopped and started again while the relay runs) is tests/perf/bench_outage.py.
Exit status 1 means a wrong result (a message missing on the bus, a row left unsent), never a slow one.

    python tests/perf/bench_events.py [--tiny] [--lag-rate 500] [--rate 3000] [--seconds 20] [--backlog-seconds 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fixtures import wait_for  # noqa: E402

#: events per second of the outage the backlog figure replays
OUTAGE_RATE = 100
#: seconds between two producer commits
COMMIT_INTERVAL = 0.02


def activemq_url() -> str:
    """The test ActiveMQ's STOMP URL: from tests/run's environment, else started with its service script."""
    url = os.environ.get("BROKER_TEST_ACTIVEMQ_STOMP_URL")
    if url:
        return url
    from tests.fixtures.services import parse_env, run_script

    started = run_script("activemq", "start")
    if started.returncode != 0:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise SystemExit(f"cannot start ActiveMQ: {started.stderr.strip()[-2000:]}")
        print("bench_events: skipped, ActiveMQ is not available (tests/services/activemq.sh start failed)")
        raise SystemExit(0)
    return parse_env(run_script("activemq", "env", timeout=30).stdout)["BROKER_TEST_ACTIVEMQ_STOMP_URL"]


class Bench:
    """A migrated SQLite database with one workflow whose events the benchmark writes."""

    def __init__(self, directory: Path, user: str):
        from broker.configload import load_settings
        from broker.persistence.db import session_factory
        from broker.persistence.opening import open_database

        self.settings = load_settings(environ={}).replace("database", url=f"sqlite:///{directory / 'bench.db'}")
        self.db = open_database(self.settings, auto_migrate=True)
        self.sessions = session_factory(self.db)
        self.user = user
        self.workflow_id, self.global_id = self._workflow()
        self.seq = 1
        #: outbox id -> monotonic time of its commit
        self.committed: dict[int, float] = {}

    def _workflow(self) -> tuple[int, str]:
        from broker.description.load import load_description
        from broker.persistence import repository

        doc = (b'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="bench" eventLevel="DEBUG">'
               b'<node id="a"><payload type="sh">true</payload></node></workflow>')
        spec = load_description(doc, self.settings, filename="bench.xml")
        with self.sessions.begin() as s:
            wf = repository.submit_workflow(s, spec, descriptor=doc.decode(),
                                            owner=repository.ensure_user(s, self.user))
            return wf.id, wf.global_id

    def commit(self, count: int) -> list[int]:
        """Commit ``count`` NODE_STATE events with their outbox rows, as the writer does; their outbox ids."""
        from sqlalchemy import insert, update

        from broker.events.routing import ALL_EVENTS_TOPIC, user_topic
        from broker.persistence.models import Event, Outbox, Workflow

        now = dt.datetime.now(dt.timezone.utc)
        rows = []
        for _ in range(count):
            self.seq += 1
            rows.append({"workflow_id": self.workflow_id, "seq": self.seq, "node_path": "a", "actor": "bench",
                         "level": 2, "type": "NODE_STATE", "state": "running", "message": "bench event",
                         "time": now, "properties": {"attempt": 1, "previous": "queued"}})
        with self.sessions.begin() as s:
            ids = s.execute(insert(Event.__table__).returning(Event.__table__.c.id, sort_by_parameter_order=True),
                            rows).scalars().all()
            outbox = s.execute(
                insert(Outbox.__table__).returning(Outbox.__table__.c.id, sort_by_parameter_order=True),
                [{"event_id": i, "destination": d} for i in ids for d in (ALL_EVENTS_TOPIC, user_topic(self.user))]
            ).scalars().all()
            s.execute(update(Workflow.__table__).where(Workflow.__table__.c.id == self.workflow_id)
                      .values(event_seq=self.seq))
        stamp = time.monotonic()
        for i in outbox:
            self.committed[i] = stamp
        return list(outbox)

    def unsent(self) -> int:
        from broker.events.relay import count_unsent

        with self.sessions() as s:
            return count_unsent(s)


def relay_for(bench: Bench, url: str, window: int, hook: Any) -> Any:
    from broker.config import EventsSettings
    from broker.events.relay import OutboxRelay

    settings = EventsSettings(url=url, window=window, poll_interval=0.5, stop_timeout=30.0)
    return OutboxRelay.from_settings(settings, bench.sessions, on_confirmed=hook)


def consume(url: str, user: str) -> int:
    """Child process: a durable subscriber of the all-events topic (this run's user only), acknowledging
    automatically; prints READY, then, given an expected count on stdin, prints how many it got."""
    import stomp

    got = [0]
    cond = threading.Condition()

    subscribed = threading.Event()

    class Counter(stomp.ConnectionListener):
        def on_message(self, frame: Any) -> None:
            with cond:
                got[0] += 1
                cond.notify_all()

        def on_receipt(self, frame: Any) -> None:
            subscribed.set()

    name = f"bench-{uuid.uuid4().hex[:8]}"
    host, port = url.rpartition("/")[2].split(":")
    conn = stomp.Connection12([(host, int(port))])
    conn.set_listener("count", Counter())
    conn.connect(wait=True, headers={"client-id": name})
    conn.subscribe("/topic/broker.events", id="1", ack="auto",
                   headers={"activemq.subscriptionName": name, "selector": f"user = '{user}'", "receipt": "sub"})
    if not subscribed.wait(60):
        raise SystemExit("no receipt for the durable subscription")
    print("READY", flush=True)
    wanted = int(sys.stdin.readline())
    with cond:
        cond.wait_for(lambda: got[0] >= wanted, 120)
        print(got[0], flush=True)
    conn.unsubscribe(id="1", headers={"activemq.subscriptionName": name})
    conn.disconnect()
    return 0


def durable_consumer(url: str, user: str) -> Any:
    """The durable subscriber, in a process of its own (it must not take the relay's CPU)."""
    import subprocess

    child = subprocess.Popen([sys.executable, __file__, "--consume", url, user], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "READY"
    return child


def wrong(text: str) -> SystemExit:
    """The benchmark's end when a wait times out (tests.fixtures.wait_for's ``error``)."""
    return SystemExit(f"WRONG: {text}")


def ceiling(url: str, count: int, window: int, user: str, transactions: bool) -> float:
    """Raw stomp.py publishing the relay's messages to its two topics, waiting for receipts per window:
    each message with its own receipt, or (``transactions``) one transaction per window. Messages/s."""
    import socket

    import stomp

    from broker.events import document
    from broker.events.routing import ALL_EVENTS_TOPIC, user_topic
    from broker.events.types import EventLevel, EventType

    event = document.EventDocument(event_id=1, seq=1, type=EventType.NODE_STATE, level=EventLevel.STATUS,
                                   workflow_id="wf-" + "0" * 18, node_id="wf-" + "0" * 18 + "/a", user=user,
                                   actor="bench", state="running", time=dt.datetime.now(dt.timezone.utc),
                                   message="bench event", properties={"attempt": 1, "previous": "queued"})
    body, headers = document.render(event), document.headers(event)
    got: set[str] = set()
    cond = threading.Condition()

    class Receipts(stomp.ConnectionListener):
        def on_receipt(self, frame: Any) -> None:
            with cond:
                got.add(frame.headers["receipt-id"])
                cond.notify_all()

    host, port = url.rpartition("/")[2].split(":")
    conn = stomp.Connection12([(host, int(port))], auto_content_length=False)
    conn.set_listener("r", Receipts())
    conn.connect(wait=True)
    conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()
    for first in range(0, count, window):
        tx = f"t{first}" if transactions else None
        if tx:
            conn.begin(transaction=tx)
        wanted = []
        for i in range(first, min(count, first + window)):
            destination = ALL_EVENTS_TOPIC if i % 2 == 0 else user_topic(user)
            extra = {"transaction": tx} if tx else {"receipt": f"m{i}"}
            conn.send(destination, body, headers={**headers, **extra})
            wanted += [] if tx else [f"m{i}"]
        if tx:
            conn.commit(transaction=tx, headers={"receipt": f"c{first}"})
            wanted.append(f"c{first}")
        with cond:
            if not cond.wait_for(lambda: all(r in got for r in wanted), 60):
                raise SystemExit("WRONG: raw publishing lost receipts")
    elapsed = time.monotonic() - started
    conn.disconnect()
    return count / elapsed


def sustained(bench: Bench, url: str, rate: float, seconds: float, window: int) -> tuple[float, list[float], int]:
    """Commit ``rate`` events/s for ``seconds`` with the relay running: (events/s confirmed, lags, events)."""
    confirmed: dict[int, float] = {}
    lock = threading.Lock()

    def hook(ids: Any, when: float) -> None:
        with lock:
            for i in ids:
                confirmed[i] = when

    relay = relay_for(bench, url, window, hook).start()
    ids: list[int] = []
    try:
        per_commit = max(1, round(rate * COMMIT_INTERVAL))
        started = time.monotonic()
        commits = int(seconds / COMMIT_INTERVAL)
        for n in range(commits):
            ids += bench.commit(per_commit)
            relay.wake()
            pause = started + (n + 1) * COMMIT_INTERVAL - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the producer at the offered rate
        wait_for(lambda: len(confirmed) >= len(ids), deadline=120, what="the relay to confirm every sustained event",
                 interval=0.01, error=wrong)
        finished = max(confirmed[i] for i in ids)
    finally:
        relay.stop()
    events = len(ids) // 2
    lags = [confirmed[i] - bench.committed[i] for i in ids]
    return events / (finished - started), lags, events


def backlog(bench: Bench, url: str, outage_seconds: float, window: int) -> tuple[float, int]:
    """Rows of an outage inserted with the relay stopped, then drained: (seconds, events)."""
    events = int(outage_seconds * OUTAGE_RATE)
    for _ in range(events // 100):
        bench.commit(100)
    relay = relay_for(bench, url, window, None)
    started = time.monotonic()
    relay.start()
    try:
        wait_for(lambda: bench.unsent() == 0, deadline=600, what="the backlog to drain", interval=0.01, error=wrong)
        return time.monotonic() - started, events
    finally:
        relay.stop()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a quick run at small sizes (CI)")
    parser.add_argument("--lag-rate", type=float, default=500.0, help="offered events/s when measuring the lag")
    parser.add_argument("--rate", type=float, default=3000.0, help="offered events/s when measuring capacity")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each sustained phase")
    parser.add_argument("--backlog-seconds", type=float, default=60.0, help="length of the replayed outage")
    parser.add_argument("--window", type=int, default=1000, help="[events] window")
    parser.add_argument("--consume", nargs=2, metavar=("URL", "USER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        return consume(*args.consume)
    if args.tiny:
        args.seconds, args.backlog_seconds = 2.0, 6.0
    drain_target = 30.0 * args.backlog_seconds / 60.0

    url = activemq_url()
    user = "bench" + uuid.uuid4().hex[:8]
    consumer = durable_consumer(url, user)
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        bench = Bench(Path(tmp), user)
        try:
            raw_count = int(max(2000, args.lag_rate * args.seconds))
            raw = ceiling(url, raw_count, args.window, user, transactions=False)
            raw_tx = ceiling(url, raw_count, args.window, user, transactions=True)
            _, lags, lag_events = sustained(bench, url, args.lag_rate, args.seconds, args.window)
            rate, _, events = sustained(bench, url, args.rate, args.seconds, args.window)
            events += lag_events
            drain, backlog_events = backlog(bench, url, args.backlog_seconds, args.window)
            # each raw phase sent every other message to the all-events topic; +1: WORKFLOW_SUBMITTED
            wanted = 2 * ((raw_count + 1) // 2) + events + backlog_events + 1
            left = bench.unsent()
        finally:
            bench.db.dispose()
        out, _ = consumer.communicate(f"{wanted}\n", timeout=180)
        got = int(out.split()[-1])

    p50, p99 = percentile(lags, 0.50), percentile(lags, 0.99)
    rows = [
        ("raw stomp.py, a receipt per message", f"{raw:,.0f} msg/s = {raw / 2:,.0f} events/s", "", ""),
        ("raw stomp.py, a transaction per window (ceiling)", f"{raw_tx:,.0f} msg/s = {raw_tx / 2:,.0f} events/s",
         "", ""),
        (f"relay sustained ({args.rate:,.0f} events/s offered)", f"{rate:,.0f} events/s ({2 * rate:,.0f} msg/s)",
         ">= 500 events/s", "PASS" if rate >= 500 else "MISS"),
        (f"commit-to-receipt lag p50 at {args.lag_rate:,.0f} events/s", f"{p50 * 1000:,.1f} ms", "", ""),
        (f"commit-to-receipt lag p99 at {args.lag_rate:,.0f} events/s", f"{p99 * 1000:,.1f} ms", "< 1000 ms",
         "PASS" if p99 < 1.0 else "MISS"),
        (f"backlog of {args.backlog_seconds:g} s at {OUTAGE_RATE}/s ({backlog_events:,} events, "
         f"{2 * backlog_events:,} msgs) drained", f"{drain:.2f} s ({backlog_events / drain:,.0f} events/s)",
         f"< {drain_target:g} s", "PASS" if drain < drain_target else "MISS"),
    ]
    print(f"bench_events {date.today()} | {os.cpu_count()} CPUs | Python {platform.python_version()} | "
          f"ActiveMQ at {url} (persistent, receipts, 1 durable subscriber) | SQLite synchronous=full | "
          f"window {args.window}{' | --tiny' if args.tiny else ''}")
    width = max(len(r[0]) for r in rows)
    print(f"| {'figure':<{width}} | {'value':<36} | {'target':<16} | result |")
    print(f"|{'-' * (width + 2)}|{'-' * 38}|{'-' * 18}|--------|")
    for name, value, target, result in rows:
        print(f"| {name:<{width}} | {value:<36} | {target:<16} | {result:<6} |")
    if left or got < wanted:
        print(f"WRONG: {left} rows unsent, the durable subscriber got {got} of {wanted} messages")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
