"""One broker at a time per database.

SQLite: an exclusive ``flock`` on ``<database file>.lock`` (released by the kernel when the process dies,
so a kill -9 never leaves a stale lock). PostgreSQL: a session-level advisory lock held on a dedicated
connection for the broker's lifetime (a lease: it is released when that connection ends).
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from broker.errors import BrokerLocked

#: advisory lock key on PostgreSQL ("wfbroker" as a 63-bit integer)
ADVISORY_KEY = 0x7766_6272_6F6B_6572 & 0x7FFF_FFFF_FFFF_FFFF


class BrokerLock:
    def __init__(self, url: str):
        self.url = make_url(url)
        self._fd: int | None = None
        self._conn: Any = None
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
            from broker.persistence.db import normalise_url

            self._engine = create_engine(normalise_url(str(self.url)), pool_size=1, max_overflow=0)
            conn = self._engine.connect()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar()
            conn.commit()
            if not got:
                conn.close()
                self._engine.dispose()
                raise BrokerLocked(f"another broker is using {self.url.render_as_string(hide_password=True)}")
            self._conn = conn

    def alive(self) -> bool:
        """Whether the lease still holds (PostgreSQL: the lock's connection is still up)."""
        if self._conn is None:
            return True
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
                self._conn.commit()
                self._conn.close()
            finally:
                self._engine.dispose()
                self._conn = None

    def __enter__(self) -> BrokerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def broker_running(url: str) -> bool:
    """Whether a broker currently holds the database (by trying the lock and letting it go)."""
    lock = BrokerLock(url)
    try:
        lock.acquire()
    except BrokerLocked:
        return True
    lock.release()
    return False
