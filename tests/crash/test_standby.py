"""A standby ``broker serve`` on PostgreSQL: it waits while another broker is active, then takes over.

Two real ``broker serve`` processes on one database and one work root, with a short lease (renewed every
:data:`RENEW` s, free after :data:`TIMEOUT` s) and a standby that looks at it every :data:`POLL` s. The
workflows' payloads append ``<node path> <attempt>`` to a marker file of their own, so a node that ran twice
shows as a second line.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.persistence.schema_version import HEAD_REVISION
from tests.api.helpers import Server, add_users, workflow
from tests.api.test_operable import get
from tests.crash.helpers import marker_name
from tests.fixtures import DEADLINE, wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker serve` processes

#: seconds between renewals, without renewal until the lease is free, between a standby's looks at it
RENEW, TIMEOUT, POLL = 0.5, 4.0, 0.2
#: execute nodes of the big workflow (members of one sweep)
NODES = 500
#: the issue's bound: a standby is active within this many seconds of the lease being free
TAKEOVER = 10.0

postgres_only = pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)])


def sweep(markers: Path, members: int, work: float = 0.02) -> str:
    """A workflow of ``members`` execute nodes, each appending its path and attempt to its own marker file."""
    payload = (f'<payload type="sh">m="{markers}/$(printf %s "$WB_NODE_PATH" | tr "/[]" "._-")"; '
               f'echo "$WB_NODE_PATH $WB_ATTEMPT" &gt;&gt; "$m"; sleep {work}</payload>')
    return workflow(f'<sweep id="s"><param name="i"><range from="1" to="{members}"/></param>'
                    f'<body><node id="n">{payload}</node></body></sweep>', name="standby")


class Pair:
    """``broker serve`` processes of one test on one database; each has its own directory and log."""

    def __init__(self, url: str, tmp: Path):
        self.url, self.tmp = url, tmp
        self.markers = tmp / "markers"
        self.markers.mkdir()
        self.servers: list[Server] = []
        add_users(url)

    def start(self, **env: str) -> tuple[Server, str]:
        """Start a server; (it, its first line on standard output: ``serving on ...`` or ``standby on ...``)."""
        home = self.tmp / f"serve{len(self.servers) + 1}"
        home.mkdir()
        server = Server(self.url, home, {
            "BROKER_ENGINE_WORKDIR": str(self.tmp / "work"), "BROKER_ENGINE_LEASE_RENEW": str(RENEW),
            "BROKER_ENGINE_LEASE_TIMEOUT": str(TIMEOUT), "BROKER_ENGINE_STANDBY_POLL": str(POLL),
            "BROKER_ENGINE_MAX_IN_FLIGHT": "16", **env})
        self.servers.append(server)
        server.start(wait=False)
        selector = selectors.DefaultSelector()
        selector.register(server.process.stdout, selectors.EVENT_READ)

        def line() -> str | None:
            if server.process.poll() is not None:
                raise AssertionError(f"broker serve ended (exit {server.process.returncode}):\n{server.log_text()}")
            return server.process.stdout.readline() if selector.select(timeout=0.1) else None

        first = wait_for(line, what="the first line of broker serve")
        selector.close()
        server.base = first.split()[2].rstrip(":")
        return server, first

    def active(self) -> Server:
        server, first = self.start()
        assert first.startswith("serving on "), first
        return server

    def standby(self, **env: str) -> Server:
        server, first = self.start(**env)
        assert first.startswith("standby on ") and "is active on" in first, first
        assert get(server.base, "/health") == (503, "standby")
        return server

    def lease(self) -> tuple[int, str | None]:
        with self.servers[0].sessions()() as s:
            return tuple(s.execute(text("SELECT epoch, holder FROM broker_lease WHERE id = 1")).one())

    def sql(self, statement: str, **params: object) -> None:
        with self.servers[0].sessions().begin() as s:
            s.execute(text(statement), params)

    def sql_value(self, statement: str) -> object:
        with self.servers[0].sessions()() as s:
            return s.execute(text(statement)).scalar()

    def now(self) -> object:
        return self.sql_value("SELECT clock_timestamp()")

    def standby_queries_after(self, since: object, count: int) -> list[object]:
        """Wait until the standby's connection has started ``count`` queries after ``since`` (times seen)."""
        seen: set[object] = set()

        def enough() -> bool:
            with self.servers[0].sessions()() as s:
                started = s.execute(text("SELECT max(query_start) FROM pg_stat_activity "
                                         "WHERE application_name LIKE 'broker standby on %'")).scalar()
            if started is not None and started > since:
                seen.add(started)
            return len(seen) >= count

        wait_for(enough, interval=0.01, what=f"the standby to look at the database {count} times")
        return sorted(seen)

    def done(self) -> tuple[int, int]:
        """Execute nodes that ended, and those running."""
        with self.servers[0].sessions()() as s:
            return tuple(s.execute(text(
                "SELECT count(CASE WHEN state IN ('succeeded', 'failed', 'cancelled', 'skipped') THEN 1 END), "
                "count(CASE WHEN state = 'running' THEN 1 END) FROM nodes WHERE kind = 'node'")).one())

    def wait_done(self, at_least: int, server: Server) -> None:
        """Until ``at_least`` nodes ended while payloads still run (the workflow must be going on)."""
        wait_for(lambda: server.process.poll() is not None or (lambda d, r: d >= at_least and r > 0)(*self.done()),
                 interval=0.01, what=f"{at_least} nodes to end")
        assert server.process.poll() is None, server.log_text()

    def assert_every_node_ran_once(self, server: Server, workflow_id: int, nodes: int) -> None:
        assert server.wait_state(workflow_id, "succeeded", "failed", "cancelled") == "succeeded"
        expected = {marker_name(f"s[{i}]/n"): [f"s[{i}]/n 1"] for i in range(nodes)}
        found = {path.name: path.read_text().splitlines() for path in self.markers.iterdir()}
        assert {name: lines for name, lines in found.items() if lines != expected.get(name)} == {}
        assert len(found) == nodes

    def close(self) -> None:
        for server in self.servers:
            if server.process is not None:
                if server.process.poll() is None:
                    server.process.kill()
                server.process.wait(timeout=DEADLINE)
                server.log.close()
            server.close()


@pytest.fixture
def pair(migrated_url: str, tmp_path: Path):
    servers = Pair(migrated_url, tmp_path)
    try:
        yield servers
    finally:
        servers.close()


def service_events(server: Server) -> list[tuple[str, int]]:
    with server.sessions()() as s:
        return [(what, int(pid)) for what, pid in s.execute(text(
            "SELECT properties->>'what', properties->>'pid' FROM events WHERE type = 'SERVICE' ORDER BY id"))]


def activated(server: Server, since: float) -> float:
    """Wait until ``server`` answers /health with 200 active; the seconds from ``since``."""
    wait_for(lambda: get(server.base, "/health") == (200, "active"), interval=0.05, what="the standby to be active")
    return time.monotonic() - since


@postgres_only
def test_a_standby_finishes_the_workflow_of_an_active_broker_killed_with_sigkill(pair: Pair):
    active = pair.active()
    standby = pair.standby()
    status, body = get(standby.base, "/broker?wsdl")  # calls too: a fault that says why
    assert status == 503 and "this broker is a standby" in body, body
    handle = active.core().submit({"workflowContent": sweep(pair.markers, NODES)})
    epoch, holder = pair.lease()
    assert f"pid {active.process.pid}" in holder
    pair.wait_done(NODES // 3, active)
    os.kill(active.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    active.process.wait(timeout=DEADLINE)
    # the holder is gone from this machine: its lease is free at once, so the standby's next look takes it
    assert activated(standby, killed) < TAKEOVER
    now_epoch, now_holder = pair.lease()
    assert now_epoch == epoch + 1 and now_holder.endswith(f", pid {standby.process.pid}"), now_holder
    pair.assert_every_node_ran_once(standby, handle.id, NODES)
    assert standby.core().getStatusInfoForId(handle.globalId).state == "succeeded"
    log = standby.log_text()
    assert log.count("standby: ") == 2, log  # waiting, then taking over: one line each
    assert "Traceback" not in log and "ERROR" not in log, log
    standby.stop(expect=0)


@postgres_only
def test_a_broker_stopped_past_its_lease_writes_nothing_once_the_standby_took_over_and_stops(pair: Pair):
    active = pair.active()
    standby = pair.standby()
    handle = active.core().submit({"workflowContent": sweep(pair.markers, 120, work=0.05)})
    pair.wait_done(20, active)
    os.kill(active.process.pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        # stopped, not gone: the lease is free only once it expires, and the standby is active soon after
        assert activated(standby, stopped) < TIMEOUT + TAKEOVER
        assert get(standby.base, "/health") == (200, "active")
        before = len(active.log_text())
    finally:
        os.kill(active.process.pid, signal.SIGCONT)
    assert active.process.wait(timeout=DEADLINE) == 3, active.log_text()
    after = active.log_text()[before:]
    assert "Traceback" not in after, after
    (line,) = [line for line in after.splitlines() if line.startswith("broker: ")]
    assert line.startswith("broker: lost the lease on ") and f"pid {standby.process.pid}" in line, line
    pair.assert_every_node_ran_once(standby, handle.id, 120)
    # the old broker recorded nothing more: no "stopped" of its own, the standby's start after its start
    assert service_events(standby) == [("started", active.process.pid), ("started", standby.process.pid)]
    standby.stop(expect=0)
    assert service_events(standby)[-1] == ("stopped", standby.process.pid)


@postgres_only
def test_a_standby_at_another_schema_revision_than_the_database_refuses_to_take_over(pair: Pair):
    active = pair.active()
    standby = pair.standby()
    pair.sql("UPDATE alembic_version SET version_num = '9999'")  # as if a newer broker had migrated it
    refusal = "standby: not taking over: database "
    wait_for(lambda: refusal in standby.log_text(), what="the standby to say it would refuse")  # said at once
    epoch, _ = pair.lease()
    os.kill(active.process.pid, signal.SIGKILL)
    active.process.wait(timeout=DEADLINE)
    # the lease is free now (its holder is gone): once the standby has looked at it again, it still waits
    looked_after = pair.standby_queries_after(pair.now(), 3)
    assert get(standby.base, "/health") == (503, "standby"), looked_after
    assert pair.lease()[0] == epoch  # nothing claimed
    (line,) = [line for line in standby.log_text().splitlines() if refusal in line]
    assert "at revision 9999, which this broker does not know" in line, line
    # once the database is at its revision again the standby takes over
    pair.sql("UPDATE alembic_version SET version_num = :head", head=HEAD_REVISION)
    activated(standby, time.monotonic())
    assert pair.lease()[0] == epoch + 1
    assert standby.log_text().count(refusal) == 1  # said once
    standby.stop(expect=0)


@postgres_only
def test_a_standby_on_another_machine_refuses_when_configured_to_and_stops_on_sigterm(pair: Pair):
    active = pair.active()
    standby = pair.standby(BROKER_ENGINE_STANDBY_TAKEOVER="refuse")
    pair.sql("UPDATE broker_lease SET machine = 'another-boot-id/4026531836'")  # the holder ran elsewhere
    os.kill(active.process.pid, signal.SIGKILL)
    active.process.wait(timeout=DEADLINE)
    # from another machine the holder's death cannot be seen: the lease is free once it expires
    refusal = wait_for(lambda: [line for line in standby.log_text().splitlines()
                                if "standby: not taking over the lease" in line], what="the standby to refuse")
    assert "ran on another machine" in refusal[0] and "standby_takeover = refuse" in refusal[0], refusal
    assert get(standby.base, "/health") == (503, "standby")
    assert standby.stop(expect=0) == 0  # a standby stops at once on SIGTERM


@postgres_only
def test_a_broker_started_with_refuse_while_a_lease_of_another_machine_is_free_waits_as_a_standby(pair: Pair):
    first = pair.active()
    first.stop(expect=0)  # released: free at once, and the row keeps its holder's machine
    ours = pair.sql_value("SELECT machine FROM broker_lease WHERE id = 1")
    pair.sql("UPDATE broker_lease SET machine = 'another-boot-id/4026531836'")
    epoch, _ = pair.lease()
    server, line = pair.start(BROKER_ENGINE_STANDBY_TAKEOVER="refuse")
    assert line.startswith("standby on ") and ": not taking over the lease on " in line, line
    assert "ran on another machine" in line and "standby_takeover = refuse" in line, line
    assert get(server.base, "/health") == (503, "standby")
    pair.standby_queries_after(pair.now(), 3)  # it looks again and again, and still waits
    assert pair.lease()[0] == epoch and get(server.base, "/health") == (503, "standby")
    # once a broker of that machine (here: this one again) has held it, the lease is taken as usual
    pair.sql("UPDATE broker_lease SET machine = :ours", ours=ours)
    activated(server, time.monotonic())
    assert pair.lease()[0] == epoch + 1
    refusals = [line for line in server.log_text().splitlines() if "not taking over the lease" in line]
    assert len(refusals) == 1 and refusals[0].startswith("WARNING "), refusals  # said once, as a warning
    server.stop(expect=0)


@postgres_only
def test_a_standby_on_another_machine_records_local_attempts_lost_and_never_runs_them_again(pair: Pair, tmp_path):
    active = pair.active()
    standby = pair.standby()
    gate = tmp_path / "gate"
    ran = tmp_path / "ran"
    handle = active.core().submit({"workflowContent": workflow(
        f'<node id="w"><payload type="sh">echo run &gt;&gt; "{ran}"; i=0; '
        f'while [ ! -e "{gate}" ] &amp;&amp; [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done</payload></node>')})
    wait_for(lambda: ran.exists() and active.node(handle.id, "w").state == "running", what="the payload to run")
    pair.sql("UPDATE broker_lease SET machine = 'another-boot-id/4026531836'")
    os.kill(active.process.pid, signal.SIGKILL)
    active.process.wait(timeout=DEADLINE)
    activated(standby, time.monotonic())
    assert standby.wait_state(handle.id, "failed", "succeeded") == "failed"
    node = standby.node(handle.id, "w")
    assert node.attempt == 1 and "ran on the local host of another machine" in node.message, node.message
    gate.touch()  # the payload the "other machine" left ends; it was never started a second time
    assert ran.read_text() == "run\n"
    standby.stop(expect=0)
