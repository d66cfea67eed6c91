"""The broker lease on PostgreSQL (broker.persistence.lease): claimed once, renewed, checked by every commit and
before every action, taken over only once expired (or once its holder's process is gone from this machine)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from broker.config import EngineSettings
from broker.errors import BrokerLocked, ConfigError, LeaseLost
from broker.persistence.changes import Note
from broker.persistence.db import make_engine, session_factory
from broker.persistence.lock import BrokerLock, broker_running
from broker.persistence.schema_version import HEAD_REVISION
from broker.persistence.standby import Standby
from broker.persistence.store import Store
from broker.workers.context import WorkerContext
from tests.fixtures import wait_for

pytestmark = pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)])

#: renewals far apart: a test decides when a lease expires (by setting its expiry in the past)
SLOW = EngineSettings(lease_renew=30.0, lease_timeout=60.0)


class Locks:
    """Brokers' locks on one database, and what their on_lost heard; all released at the end."""

    def __init__(self, url: str):
        self.url = url
        self.db = make_engine(url)
        self.lost: list[str] = []
        self._held: list[BrokerLock] = []

    def take(self, settings: EngineSettings = SLOW, role: str = "broker run") -> BrokerLock:
        lock = BrokerLock(self.url, settings, role=role, on_lost=self.lost.append)
        lock.acquire()
        self._held.append(lock)
        return lock

    def sql(self, statement: str, **params: object) -> object:
        with self.db.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.one() if result.returns_rows else None

    def row(self) -> object:
        return self.sql("SELECT epoch, holder, pid FROM broker_lease WHERE id = 1")

    def expire(self) -> None:
        """As if the holder had stopped renewing lease_timeout ago."""
        self.sql("UPDATE broker_lease SET expires_at = clock_timestamp() - interval '1 second'")

    def close(self) -> None:
        for lock in self._held:
            lock.release()
        self.db.dispose()


@pytest.fixture
def locks(migrated_url: str) -> Iterator[Locks]:
    held = Locks(migrated_url)
    try:
        yield held
    finally:
        held.close()


def test_a_second_broker_is_refused_while_the_holder_runs_and_the_lease_is_free_once_released(locks):
    first = locks.take()
    epoch = first.lease.epoch
    assert broker_running(locks.url)
    with pytest.raises(BrokerLocked, match="another broker is using .*: broker run on .*, pid"):
        locks.take()
    first.release()
    assert locks.row().holder is None and not broker_running(locks.url)
    second = locks.take()
    assert second.lease.epoch == epoch + 1


def test_an_expired_lease_is_taken_over_and_its_old_holder_can_commit_nothing(locks):
    first = locks.take()
    store = Store(session_factory(locks.db), guard=first.guard)
    locks.expire()
    second = locks.take(role="broker serve")
    assert locks.row().epoch == first.lease.epoch + 1
    note = Note(None, "ADMIN_ACTION", "admin:root", message="written by the lease's holder only")
    with pytest.raises(LeaseLost):
        store.commit([note])
    assert locks.sql("SELECT count(*) AS n FROM events").n == 0
    (line,) = locks.lost  # on_lost heard it once, in one line naming who holds the lease now
    assert line.startswith("lost the lease on ") and "broker serve on " in line and "writing nothing more" in line
    assert not first.alive() and second.alive()
    Store(session_factory(locks.db), guard=second.guard).commit([note])
    assert locks.sql("SELECT count(*) AS n FROM events").n == 1


def test_a_holder_that_renews_after_its_connections_were_cut_keeps_its_lease(locks):
    first = locks.take(EngineSettings(lease_renew=0.2, lease_timeout=2.0))
    epoch = first.lease.epoch
    renewed = locks.sql("SELECT renewed_at FROM broker_lease").renewed_at
    ended = locks.sql("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()").n
    assert ended >= 1
    wait_for(lambda: locks.sql("SELECT renewed_at FROM broker_lease").renewed_at > renewed, what="a renewal")
    assert locks.row().epoch == epoch and first.alive() and locks.lost == []
    with session_factory(locks.db).begin() as s:
        first.guard.check(s)  # a commit checks the same epoch: still ours


def test_a_lease_whose_holder_is_gone_from_this_machine_is_taken_at_once(locks):
    locks.take()
    gone = subprocess.Popen(["true"])
    gone.wait()
    locks.sql("UPDATE broker_lease SET pid = :pid", pid=gone.pid)  # unexpired, but its process has ended
    started = time.monotonic()
    second = locks.take()
    assert time.monotonic() - started < SLOW.lease_timeout / 2
    assert locks.row().pid == second.lease.holder.pid


@pytest.mark.slow
def test_a_holder_on_another_machine_that_renews_is_refused_and_one_that_does_not_is_waited_for(locks):
    first = locks.take(EngineSettings(lease_renew=0.2, lease_timeout=2.0))
    locks.sql("UPDATE broker_lease SET machine = 'elsewhere'")  # its pid means nothing here: watch it renew
    with pytest.raises(BrokerLocked, match="it renews its lease"):
        locks.take()
    first.lease._stop.set()  # it stops renewing, as a stopped process or a dead host would
    first.lease._thread.join()
    started = time.monotonic()
    second = locks.take(EngineSettings(lease_renew=0.2, lease_timeout=2.0))
    assert time.monotonic() - started < 10
    assert second.lease.epoch == first.lease.epoch + 1


def test_a_broker_whose_lease_was_taken_starts_nothing(locks, tmp_path):
    first = locks.take()
    ctx = WorkerContext(settings=None, session_factory=None, plans=None, workdir=tmp_path, resources=None,
                        launchers=None, lease=first.lease)
    ctx.hold()  # held: the action may go ahead
    locks.expire()
    locks.take()
    first.lease._until = 0.0  # as after a stop longer than the lease: its own clock says it must look again
    with pytest.raises(LeaseLost):
        ctx.hold()
    assert len(locks.lost) == 1


def test_a_renewal_interval_that_leaves_no_second_chance_is_a_config_error(locks):
    with pytest.raises(ConfigError, match="lease_timeout at least twice"):
        locks.take(EngineSettings(lease_renew=5.0, lease_timeout=8.0))



def test_a_standby_takeover_mode_other_than_remote_only_or_refuse_is_a_config_error(locks):
    with pytest.raises(ConfigError, match=r"\[engine\] standby_takeover: invalid value 'all' \(expected one of "
                                          r"remote-only, refuse\)"):
        locks.take(EngineSettings(standby_takeover="all"))


def test_a_lease_taken_after_a_holder_on_another_machine_says_so_and_one_from_this_machine_does_not(locks):
    first = locks.take()
    assert not first.lease.from_elsewhere()  # a fresh database: no previous holder
    first.release()
    second = locks.take()
    assert second.lease.previous_machine == second.lease.holder.machine and not second.lease.from_elsewhere()
    locks.sql("UPDATE broker_lease SET machine = 'elsewhere'")
    second.release()  # released, the row keeps the machine of its last holder
    assert locks.take().lease.from_elsewhere()


def test_a_standby_waits_while_the_lease_is_held_and_refuses_what_it_is_told_to(locks):
    stop = threading.Event()
    first = locks.take()
    standby = Standby(locks.url, EngineSettings(standby_takeover="refuse"), stop)
    try:
        assert standby._judge() == (None, "") and standby.holder == first.lease.holder.text  # held: wait, quietly
        assert standby.why.endswith(" is active on " + standby.where + "; taking over when its lease is free")
        assert not standby.refusing
        assert standby.look() == (True, None)
        locks.expire()
        epoch = locks.row().epoch
        assert standby._judge() == (epoch, "")  # this machine's lease: go, claiming that epoch
        assert standby.look() == (False, epoch)
        locks.sql("UPDATE broker_lease SET machine = 'elsewhere'")
        assert "ran on another machine" in standby._judge()[1]
        assert standby.look() == (True, None)  # also when broker serve starts while the lease is free
        assert standby.refusing and "ran on another machine" in standby.why
        locks.sql("UPDATE broker_lease SET machine = :mine", mine=first.lease.holder.machine)
        locks.sql("UPDATE alembic_version SET version_num = '0001'")
        epoch_, reason = standby._judge()
        assert epoch_ is None and reason.startswith("not taking over: database ") and "at revision 0001" in reason
        # but not when it starts: its engine migrates an older database (and refuses a newer one) itself
        assert standby.look() == (False, epoch)
        stop.set()
        assert standby.wait() is None  # a stop ends the wait
    finally:
        locks.sql("UPDATE alembic_version SET version_num = :head", head=HEAD_REVISION)
        standby.close()


def test_a_standby_claims_the_epoch_it_judged_free_or_none_and_judges_the_next_holder_again(locks):
    # the race: the standby judged a lease of this machine free, then a broker of another machine claimed it
    # and stopped renewing before this claim; that one's machine was never judged (refuse: never take it)
    first = locks.take()
    locks.expire()
    standby = Standby(locks.url, EngineSettings(standby_takeover="refuse"), threading.Event())
    try:
        judged = standby._judge()[0]
        assert judged == first.lease.epoch
        first.release()
        other = locks.take()
        locks.sql("UPDATE broker_lease SET machine = 'elsewhere'")
        other.lease._stop.set()  # its renewals end, as with a broker killed on its machine
        locks.expire()
        claim = BrokerLock(locks.url, SLOW, on_lost=locks.lost.append, epoch=judged)
        with pytest.raises(BrokerLocked, match=rf"changed since it was seen free: .* at epoch {judged + 1}"):
            claim.acquire()  # without the epoch it would take this expired lease at once
        assert locks.row().epoch == judged + 1 and locks.row().holder == other.lease.holder.text  # nothing claimed
        assert "ran on another machine" in standby._judge()[1]  # judged again: refused
        # without the refusal the new epoch is claimed, that one only
        locks.sql("UPDATE broker_lease SET machine = :mine", mine=other.lease.holder.machine)
        assert standby._judge() == (judged + 1, "")
        taken = BrokerLock(locks.url, SLOW, on_lost=locks.lost.append, epoch=judged + 1)
        taken.acquire()
        try:
            assert taken.lease.epoch == judged + 2
        finally:
            taken.release()
    finally:
        standby.close()


def test_a_renewal_does_not_wait_for_a_writer_transaction_that_checked_the_lease(locks):
    first = locks.take()
    with session_factory(locks.db).begin() as s:
        first.guard.check(s)  # the writer's transaction keeps the row locked until it ends
        renewal = threading.Thread(target=first.lease._renew)
        renewal.start()
        renewal.join(timeout=30)
        assert not renewal.is_alive(), "the renewal waited for the writer's transaction"


def test_a_check_sent_with_the_writes_holds_the_row_until_the_commit_and_refuses_a_lost_lease(locks):
    first = locks.take()
    lock_waits = []

    def take_over():  # what a takeover does first: lock the row FOR UPDATE (here with a short lock_timeout)
        with locks.db.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '300ms'"))
            try:
                conn.execute(text("SELECT epoch FROM broker_lease WHERE id = 1 FOR UPDATE"))
                lock_waits.append("got it")
            except Exception as exc:  # the lock timeout: it waited for the writer's transaction
                lock_waits.append(type(exc).__name__)

    with session_factory(locks.db).begin() as s:
        driver = s.connection().connection.driver_connection
        with driver.pipeline(), driver.cursor() as cursor:
            verify = first.guard.queue_check(cursor)
            verify()  # still ours
        takeover = threading.Thread(target=take_over)
        takeover.start()
        takeover.join(timeout=30)
    assert lock_waits == ["OperationalError"], lock_waits  # the row stayed locked until the commit
    take_over()
    assert lock_waits[-1] == "got it"  # and free once it ended
    locks.expire()
    locks.take(role="broker serve")
    with session_factory(locks.db).begin() as s:
        driver = s.connection().connection.driver_connection
        with driver.pipeline(), driver.cursor() as cursor:
            verify = first.guard.queue_check(cursor)
            with pytest.raises(LeaseLost):
                verify()
