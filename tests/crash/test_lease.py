"""The lease on PostgreSQL: a broker writes only while it holds it, and finishes when only its connections die.

Both tests run the crash workflow of :mod:`tests.crash.helpers` (72 execute nodes, each appending a line to
its own marker file) with ``broker run`` on a PostgreSQL database, a short lease (renewed every
:data:`RENEW` s, free after :data:`TIMEOUT` s), and check with :meth:`Crashes.assert_every_node_ran_once`
that every node ran exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from sqlalchemy import text

from tests.cli.helpers import DEADLINE
from tests.crash.helpers import EXECUTE, Crashes
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs and stops `broker run` processes

#: seconds between renewals, and without renewal until the lease is free (short: the test waits for it)
RENEW, TIMEOUT = 0.5, 4.0

postgres_only = pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)])


@pytest.fixture
def leased(crashes: Crashes) -> Crashes:
    crashes.cli.env["BROKER_ENGINE_LEASE_RENEW"] = str(RENEW)
    crashes.cli.env["BROKER_ENGINE_LEASE_TIMEOUT"] = str(TIMEOUT)
    return crashes


def lease(crashes: Crashes) -> tuple[int, str | None]:
    with crashes._db.connect() as conn:
        return tuple(conn.execute(text("SELECT epoch, holder FROM broker_lease WHERE id = 1")).one())


def end_other_connections(crashes: Crashes) -> int:
    """pg_terminate_backend on every other connection to the test database; how many there were."""
    with crashes._db.connect() as conn:
        return conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()


def wait_done(crashes: Crashes, proc: subprocess.Popen, at_least: int) -> None:
    """Wait until ``at_least`` execute nodes ended and a payload runs (the run must still be going on)."""
    def due() -> bool:
        done, flying = crashes.census()
        return done >= at_least and flying > 0

    wait_for(lambda: proc.poll() is not None or due(), interval=0.01, what=f"{at_least} nodes to end")
    assert proc.poll() is None, f"the broker ended (exit {proc.returncode}) early:\n" + crashes.output(1)


def broker_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("broker:") or "internal error" in line]


@postgres_only
def test_a_broker_whose_connections_are_ended_reconnects_with_its_lease_and_finishes(leased: Crashes):
    proc = leased.start()
    wait_done(leased, proc, 1)
    epoch, holder = lease(leased)
    assert holder is not None and f"pid {proc.pid}" in holder
    for fraction in (0.2, 0.5, 0.8):
        wait_done(leased, proc, int(fraction * EXECUTE))
        assert end_other_connections(leased) >= 2  # at least the writer's and the lease's
    assert proc.wait(timeout=DEADLINE * 2) == 0, leased.output(1)
    assert broker_lines(leased.output(1)) == []
    assert lease(leased) == (epoch, None)  # kept the same lease to the end, and released it
    leased.assert_every_node_ran_once()


@postgres_only
def test_a_broker_stopped_past_its_lease_writes_nothing_more_once_another_took_over(leased: Crashes):
    first = leased.start()
    wait_done(leased, first, int(0.3 * EXECUTE))
    os.kill(first.pid, signal.SIGSTOP)
    try:
        epoch, _ = lease(leased)
        stopped_at = leased.census()[0]
        second = leased.start()
        # the holder is stopped, not gone: the second broker waits for the lease to expire, then takes it
        wait_for(lambda: lease(leased)[0] == epoch + 1 or second.poll() is not None, deadline=DEADLINE,
                 what="the second broker to take the lease")
        assert f"pid {second.pid}" in lease(leased)[1]
        wait_for(lambda: leased.census()[0] >= stopped_at + 5 or second.poll() is not None, deadline=DEADLINE,
                 what="the second broker to go on with the workflow")
        assert second.poll() is None, leased.output(2)
    finally:
        err = leased.cli.tmp / "run1.err"
        before = len(err.read_text())
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=DEADLINE) == 3, leased.output(1)
    # from SIGCONT to its end the first broker says one line, besides its progress display and warnings (its
    # connections were ended by the takeover): no error, no trace
    after = err.read_text()[before:]
    assert "Traceback" not in after and "ERROR" not in after, after
    (line,) = [line for line in after.splitlines() if line and not line.startswith(("[", "WARNING "))]
    assert line.startswith("broker: lost the lease on ") and "writing nothing more" in line, line
    assert f"pid {second.pid}" in line
    assert second.wait(timeout=DEADLINE * 2) == 0, leased.output(2)
    assert leased.output(2).startswith("resuming workflow ")
    assert broker_lines(leased.output(2)) == []
    leased.assert_every_node_ran_once()

