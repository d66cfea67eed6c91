"""One broker at a time per database.

SQLite: an exclusive ``flock`` on ``<database file>.lock`` (released by the kernel when the process dies,
so a kill -9 never leaves a stale lock; the file is on this machine, so its holder is too). PostgreSQL: the
lease row of :mod:`broker.persistence.lease`, renewed while the broker runs and checked by every commit.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from broker.errors import BrokerLocked, DatabaseError

if TYPE_CHECKING:
    from broker.persistence.lease import Lease


class BrokerLock:
    """``engine``: the [engine] settings (lease_renew, lease_timeout; None: the defaults); ``role`` names the
    holder in messages; ``on_lost`` is called with one line when another broker took the lease over; ``epoch``:
    the only lease epoch to claim (see :meth:`broker.persistence.lease.Lease.acquire`)."""

    def __init__(self, url: str, engine: Any = None, *, role: str = "broker",
                 on_lost: Callable[[str], None] | None = None, epoch: int | None = None):
        from broker.config import EngineSettings

        self.url = make_url(url)
        self.settings = engine if engine is not None else EngineSettings()
        self.role = role
        self.on_lost = on_lost
        self.epoch = epoch
        self._fd: int | None = None
        #: the PostgreSQL lease while held
        self.lease: Any = None
        self._engine: Any = None

    def acquire(self) -> None:
        """Take the lock or raise BrokerLocked naming the database."""
        if self.url.get_backend_name() == "sqlite":
            database = self.url.database
            if not database or database == ":memory:":
                return
            path = os.path.abspath(database) + ".lock"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise BrokerLocked(f"another broker is using {database}") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
        else:
            self._acquire_lease()

    def _acquire_lease(self) -> None:
        from broker.persistence.db import current_revision, display_url, driver_message, make_engine, \
            revision_problem
        from broker.persistence.lease import Holder, Lease, check_settings, has_lease_table

        check_settings(self.settings.lease_renew, self.settings.lease_timeout)
        from broker.persistence.standby import check_takeover

        check_takeover(self.settings.standby_takeover)  # a bad value is refused on every PostgreSQL start
        where = display_url(self.url)
        # one connection for the claim and the renewals, apart from the writer's (pre-ping: reconnects)
        self._engine = make_engine(self.url, pool_size=1, application_name=Holder.me(self.role).text)
        try:
            if not has_lease_table(self._engine):
                problem = revision_problem(current_revision(self._engine), self.url)
                raise DatabaseError(problem or f"database {where} has no broker_lease table")
            lease = Lease(self._engine, where, renew=self.settings.lease_renew, timeout=self.settings.lease_timeout,
                          role=self.role, on_lost=self.on_lost)
            lease.acquire(self.epoch)
        except DBAPIError as exc:
            self._engine.dispose()
            raise DatabaseError(f"cannot use database {where}: {driver_message(exc)}") from None
        except BaseException:
            self._engine.dispose()
            raise
        self.lease = lease

    @property
    def holder_name(self) -> str | None:
        """The application name of this broker's connections while it holds a lease (PostgreSQL), or None."""
        return self.lease.holder.text if self.lease is not None else None

    @property
    def guard(self) -> Lease | None:
        """What a writer checks in each transaction before it commits (PostgreSQL: the lease), or None."""
        return self.lease

    def alive(self) -> bool:
        """Whether the lease still holds (PostgreSQL: by its last renewal; SQLite: while this process lives)."""
        return self.lease is None or self.lease.held()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self.lease is not None:
            try:
                self.lease.release()
            finally:
                self._engine.dispose()
                self.lease = None

    def __enter__(self) -> BrokerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def broker_running(url: str) -> bool:
    """Whether a broker currently holds the database (SQLite: by trying the lock and letting it go)."""
    if make_url(url).get_backend_name() != "sqlite":
        from broker.persistence.db import make_engine
        from broker.persistence.lease import current_holder

        engine = make_engine(url, pool_size=1)
        try:
            return current_holder(engine) is not None
        finally:
            engine.dispose()
    lock = BrokerLock(url)
    try:
        lock.acquire()
    except BrokerLocked:
        return True
    lock.release()
    return False
