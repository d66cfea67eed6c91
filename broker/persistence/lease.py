"""The broker lease on PostgreSQL: one row (holder, epoch, expiry) a broker must hold to write.

Why not a session advisory lock: it lives on one connection. When that connection is cut (the server
restarts, an administrator or a proxy ends it, the network drops) the lock is gone while the broker goes on
writing; and a stopped process or a dead host keeps it until TCP gives up. The lease instead:

- is claimed with one ``UPDATE`` that only matches a free row (released, expired, or held by a process that
  is gone from this machine) and increments ``epoch``: two brokers never both win, a takeover is a new epoch;
- is renewed every ``[engine] lease_renew`` seconds (``expires_at = clock_timestamp() + lease_timeout``):
  the database's clock only, so the hosts' clocks never matter; a renewal matches ``epoch = mine`` only, so a
  holder reconnecting after a cut connection renews the same lease and goes on;
- is checked by every writer commit in the same transaction (:meth:`Lease.check`, ``epoch = mine ... FOR
  KEY SHARE``: a takeover, which locks the row FOR UPDATE, waits for that commit to end; the writer sends it
  in one pipeline with its writes, :meth:`Lease.queue_check`), and before every side effect outside the database
  (starting a payload, a transfer, a kill: :meth:`Lease.ensure`) against the holder's own boot-time clock,
  started before its last renewal was sent: a broker stopped past its expiry finds out before it acts;
- when a renewal or a commit finds another epoch, ``on_lost`` is called once: the engine prints one line
  and exits 3 at once, writing nothing more.

At start a lease held by a live broker is refused, as the advisory lock was; one held by a process that is
gone from this machine is taken at once (a restart after a crash costs no wait); one whose holder does not
renew it (stopped, or on a host that is gone) is waited for until it expires, then taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from broker.errors import BrokerLocked, ConfigError, LeaseLost

log = logging.getLogger(__name__)

#: seconds between two looks at a lease another broker holds, while waiting for it to expire
WAIT_POLL = 0.25
#: seconds between renewals while the database cannot be reached (at most; lease_renew if shorter)
RETRY = 1.0
#: bytes of an application name PostgreSQL keeps
NAME_BYTES = 63

_SELECT = text("SELECT epoch, holder, machine, pid, pid_start, renewed_at, expires_at, "
               "(expires_at IS NULL OR expires_at <= clock_timestamp()) AS expired, "
               "extract(epoch FROM expires_at - clock_timestamp()) AS remaining FROM broker_lease WHERE id = 1")
# matches only the row judged free, and only if it still is: a renewal that came meanwhile moved expires_at
_CLAIM = text("UPDATE broker_lease SET epoch = epoch + 1, holder = :holder, machine = :machine, pid = :pid, "
              "pid_start = :pid_start, acquired_at = clock_timestamp(), renewed_at = clock_timestamp(), "
              "expires_at = clock_timestamp() + :timeout * interval '1 second' "
              "WHERE id = 1 AND epoch = :seen AND (holder IS NULL OR expires_at <= clock_timestamp() OR :dead) "
              "RETURNING epoch")
_FENCE = text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() "
              "AND application_name = :name AND pid <> pg_backend_pid()")
_RENEW = text("UPDATE broker_lease SET renewed_at = clock_timestamp(), "
              "expires_at = clock_timestamp() + :timeout * interval '1 second' WHERE id = 1 AND epoch = :epoch")
# KEY SHARE: renewals (which change no key) go on beside a long writer transaction; a claim, which first
# locks the row FOR UPDATE, waits for it to end
_CHECK_SQL = "SELECT epoch FROM broker_lease WHERE id = 1 AND epoch = {} FOR KEY SHARE"
_CHECK = text(_CHECK_SQL.format(":epoch"))
_LOCK = text("SELECT epoch FROM broker_lease WHERE id = 1 FOR UPDATE")
_RELEASE = text("UPDATE broker_lease SET holder = NULL, expires_at = clock_timestamp() "
                "WHERE id = 1 AND epoch = :epoch")


def _clock() -> float:
    """Seconds on a clock that also runs while the process is stopped and while the machine sleeps."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


# ------------------------------------------------------------------------------------------ who holds it

def _machine() -> str | None:
    """This machine's boot and pid namespace: pids are comparable between processes with the same value."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _process(pid: int) -> tuple[str, int] | None:
    """A process's state letter and start time (clock ticks since boot), or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Holder:
    """Who claims the lease: a line for messages, and what lets a broker on the same machine check it."""

    text: str
    machine: str | None
    pid: int
    pid_start: int | None

    @classmethod
    def me(cls, role: str) -> Holder:
        pid = os.getpid()
        found = _process(pid)
        # also the application name of the holder's connections: PostgreSQL keeps 63 bytes of it
        room = NAME_BYTES - len(f"{role} on , pid {pid}".encode())
        host = socket.gethostname().encode()[:max(room, 1)].decode(errors="ignore")
        return cls(f"{role} on {host}, pid {pid}", _machine(), pid, found[1] if found else None)


def _here(row: Any, machine: str | None) -> str | None:
    """On this machine: "gone" (its process ended), "stopped" or "running"; None for another machine."""
    if machine is None or row.machine != machine or row.pid is None:
        return None
    found = _process(row.pid)
    if found is None or found[1] != row.pid_start or found[0] in "ZX":
        return "gone"
    return "stopped" if found[0] in "Tt" else "running"


def is_free(row: Any, machine: str | None) -> bool:
    """Whether a lease row (as ``_SELECT`` reads it) may be claimed from ``machine``: released, expired, or held
    by a process that is gone from that machine."""
    return row.holder is None or bool(row.expired) or _here(row, machine) == "gone"


def read(conn: Any) -> Any:
    """The lease row (epoch, holder, machine, pid, ..., expired, remaining), or None."""
    return conn.execute(_SELECT).one_or_none()


# ----------------------------------------------------------------------------------------------- lease

class Lease:
    """This broker's lease on a PostgreSQL database: claim, renew (a thread), check, release."""

    def __init__(self, engine: Engine, where: str, *, renew: float, timeout: float, role: str = "broker",
                 on_lost: Callable[[str], None] | None = None):
        self.engine = engine
        self.where = where
        self.renew_every = renew
        self.timeout = timeout
        self.holder = Holder.me(role)
        self.on_lost = on_lost
        self.epoch: int | None = None
        #: the machine (boot and pid namespace) of the lease's previous holder, as its row recorded it when this
        #: broker claimed it (kept by a release too); None: no broker held it before, or it did not record one
        self.previous_machine: str | None = None
        #: on :func:`_clock`: until when the lease is surely ours (set before each renewal is sent)
        self._until = 0.0
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._lost = False
        self._losing = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- claim

    def acquire(self, epoch: int | None = None) -> None:
        """Claim the lease (waiting for one its holder no longer renews) or raise BrokerLocked. ``epoch``: claim
        the lease at this epoch only, free as a standby judged it, or raise BrokerLocked at once (no wait)."""
        watched: tuple[int, Any] | None = None
        while True:
            with self.engine.begin() as conn:
                row = conn.execute(_SELECT).one_or_none()
                if row is None:  # deleted by hand: put the free row back
                    conn.execute(text("INSERT INTO broker_lease (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING"))
                    continue
                here = _here(row, self.holder.machine) if row.holder is not None else None
                free = is_free(row, self.holder.machine)
                if epoch is not None and (row.epoch != epoch or not free):
                    raise BrokerLocked(f"the lease on {self.where} changed since it was seen free: "
                                       f"{row.holder or 'nobody'} holds it at epoch {row.epoch}")
                if free:
                    if row.holder is not None:
                        # a holder stopped in a transaction keeps the lease row locked: end its connections
                        # (nothing it has not committed may be), or the claim would wait for it forever
                        conn.execute(_FENCE, {"name": row.holder})
                    conn.execute(_LOCK)
                    sent = _clock()
                    epoch = conn.execute(_CLAIM, {
                        "holder": self.holder.text, "machine": self.holder.machine, "pid": self.holder.pid,
                        "pid_start": self.holder.pid_start, "timeout": self.timeout, "seen": row.epoch,
                        "dead": here == "gone"}).scalar()
                    if epoch is not None:
                        self.epoch, self._until = epoch, sent + self.timeout
                        self.previous_machine = row.machine
                        if row.holder is not None:
                            log.warning("took over the lease on %s from %s (epoch %d)", self.where, row.holder, epoch)
                        break
                    continue  # someone renewed or claimed it meanwhile: look again
            if here == "running" or (watched is not None and watched != (row.epoch, row.renewed_at)):
                raise BrokerLocked(f"another broker is using {self.where}: {row.holder} (it renews its lease)")
            if watched is None:
                log.warning("the lease on %s is held by %s; waiting to see whether it renews it (if not, it "
                            "is free in %.0f s)", self.where, row.holder, max(0.0, float(row.remaining or 0)))
            watched = (row.epoch, row.renewed_at)
            time.sleep(WAIT_POLL)
        self._thread = threading.Thread(target=self._renewing, name="broker-lease", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- renew

    def _renew(self) -> bool:
        """Renew now: True when renewed, False when another epoch holds it. Raises DBAPIError when the database
        cannot be reached."""
        sent = _clock()
        with self.engine.begin() as conn:
            renewed = conn.execute(_RENEW, {"timeout": self.timeout, "epoch": self.epoch}).rowcount == 1
        if renewed:
            self._until = max(self._until, sent + self.timeout)
        return renewed

    def _renewing(self) -> None:
        interval, failing = self.renew_every, False
        while not self._stop.wait(interval):
            try:
                with self._mutex:
                    renewed = self._renew()
            except DBAPIError as exc:
                if not failing:
                    log.warning("cannot renew the lease on %s (%s); trying again every %.1f s",
                                self.where, _first_line(exc), min(RETRY, self.renew_every))
                interval, failing = min(RETRY, self.renew_every), True
                continue
            if failing:
                log.warning("renewed the lease on %s again", self.where)
            interval, failing = self.renew_every, False
            if not renewed:
                self._lose()
                return

    # ------------------------------------------------------------------------------------------- check

    def check(self, session: Any) -> None:
        """In a writer's transaction, before it commits: raise LeaseLost unless the lease is still ours (a
        takeover waits for this transaction to end: the row is locked FOR KEY SHARE until then)."""
        if session.execute(_CHECK, {"epoch": self.epoch}).first() is None:
            raise self._lose(session)

    def queue_check(self, cursor: Any) -> Callable[[], None]:
        """:meth:`check` sent on a driver ``cursor`` of its own, in a PostgreSQL pipeline with the statements
        it guards (no round trip of its own); the call returned raises LeaseLost unless the lease is still
        ours, and must come before the commit. The row stays locked until the transaction ends, as with
        :meth:`check`: a transaction that commits checked the lease, whatever it did before."""
        cursor.execute(_CHECK_SQL.format("%s"), (self.epoch,))

        def verify() -> None:
            if cursor.fetchone() is None:
                raise self._lose()

        return verify

    def ensure(self) -> None:
        """Return only while the lease is surely ours for at least half a renewal interval more; renew it now
        if need be (waiting while the database cannot be reached). Raises LeaseLost when it is not ours."""
        while True:
            if self._lost or self._stop.is_set():
                raise LeaseLost(f"this broker no longer holds the lease on {self.where}")
            if _clock() + self.renew_every / 2 < self._until:
                return
            try:
                with self._mutex:
                    if _clock() + self.renew_every / 2 < self._until:
                        return
                    renewed = self._renew()
            except DBAPIError as exc:
                log.warning("waiting to renew the lease on %s before acting: %s", self.where, _first_line(exc))
                time.sleep(min(RETRY, self.renew_every))
                continue
            if not renewed:
                raise self._lose()

    def from_elsewhere(self) -> bool:
        """Whether the previous holder ran on another machine: the attempts it started on its local host cannot
        be seen (nor adopted) from here."""
        return self.previous_machine is not None and self.previous_machine != self.holder.machine

    def held(self) -> bool:
        """Whether the lease is ours by the last renewal (no database round trip)."""
        return not self._lost and _clock() < self._until

    def _lose(self, session: Any = None) -> LeaseLost:
        """The lease is another broker's: call on_lost once (the engine exits there); the error to raise."""
        with self._losing:
            first, self._lost = not self._lost, True
        self._stop.set()
        now = None
        try:
            if session is not None:
                now = session.execute(_SELECT).one_or_none()
            else:
                with self.engine.connect() as conn:
                    now = conn.execute(_SELECT).one_or_none()
        except DBAPIError:
            pass
        by = f"{now.holder} holds it (epoch {now.epoch})" if now is not None and now.holder else "another broker took it"
        message = (f"lost the lease on {self.where} (epoch {self.epoch}, not renewed for longer than "
                   f"[engine] lease_timeout = {self.timeout:g} s): {by}; stopping at once, writing nothing more")
        if first and self.on_lost is not None:
            self.on_lost(message)
        return LeaseLost(message)

    # ----------------------------------------------------------------------------------------- release

    def release(self) -> None:
        """Stop renewing and free the lease for the next broker (never raises: the lease expires anyway)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self._lost or self.epoch is None:
            return
        try:
            with self._mutex, self.engine.begin() as conn:
                conn.execute(_RELEASE, {"epoch": self.epoch})
        except DBAPIError as exc:
            log.warning("could not release the lease on %s (%s): it expires in at most %g s", self.where,
                        _first_line(exc), self.timeout)


def has_lease_table(engine: Engine) -> bool:
    with engine.connect() as conn:
        return inspect(conn).has_table("broker_lease")


def current_holder(engine: Engine) -> str | None:
    """Who holds the lease now (a live or stopped holder whose lease has not expired), or None."""
    with engine.connect() as conn:
        row = conn.execute(_SELECT).one_or_none()
    if row is None or is_free(row, _machine()):
        return None
    return str(row.holder)


def exit_at_once(message: str) -> None:
    """The engine's ``on_lost``: one line on standard error, then exit 3 at once, so no thread of this process
    writes anything more (payloads still running are left to the broker that took over)."""
    try:
        root = logging.getLogger()
        if not any(getattr(h, "stream", None) is sys.stderr for h in root.handlers):
            log.critical(message)  # a service log elsewhere gets it too
            for handler in root.handlers:
                handler.flush()
        sys.stderr.write(f"broker: {message}\n")
        sys.stderr.flush()
    finally:
        os._exit(3)  # broker.cli.EXIT_ERROR


def _first_line(exc: DBAPIError) -> str:
    return str(exc.orig or exc).strip().splitlines()[0]


def check_settings(renew: float, timeout: float) -> None:
    """Raise ConfigError unless a holder gets at least two chances to renew before its lease expires."""
    if renew <= 0 or timeout < 2 * renew:
        raise ConfigError(f"[engine] lease_renew must be above 0 and lease_timeout at least twice it (got "
                          f"lease_renew = {renew:g}, lease_timeout = {timeout:g})")
