"""Password hashes (scrypt, salted) and the short-lived cache of credentials already verified.

A password hash costs tens of milliseconds on purpose (it slows down anyone who steals the database). An
API client sends its password with every call, so a verified (name, password) pair is remembered for
between half of ``[api] credential_ttl`` and all of it, chosen at random per entry, so that the logins of
many clients started together do not all expire together; entries are keyed by a keyed digest of the pair:
the cache never holds a password. A changed password or role takes effect within that time.

Each check costs about 100 ms of CPU and 32 MiB: :class:`HashGate` lets :data:`HASH_SLOTS` run at once and
bounds how many request threads may wait for one, so that logins (or a flood of wrong passwords) cannot take
every request thread from the calls of users already logged in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from broker.errors import BrokerError

T = TypeVar("T")

#: scrypt cost parameters: N=2**15, r=8 uses 32 MiB and about 50-100 ms here
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
#: bytes of random salt per hash
SALT_BYTES = 16
#: bytes of derived key
KEY_BYTES = 32
#: most entries the credential cache holds before it is emptied (bounds memory under a flood of names)
CACHE_MAX = 10_000
#: longest password accepted (scrypt would hash megabytes, but nobody needs them)
MAX_PASSWORD_CHARS = 1024
#: password checks that may run at once (each about 100 ms of CPU and 32 MiB): half the CPUs, so that
#: logins leave CPU time to the calls of users already logged in
HASH_SLOTS = max(1, (os.cpu_count() or 2) // 2)
#: seconds a login waits for a free slot before it is refused as busy
HASH_WAIT = 5.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024**2,
                          dklen=KEY_BYTES)


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$<salt>$<key>`` (base64) of a password, with a fresh random salt."""
    if not password:
        raise ValueError("a password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"a password is at most {MAX_PASSWORD_CHARS} characters long")
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time comparison)."""
    if not stored or not password or len(password) > MAX_PASSWORD_CHARS:
        return False
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True, slots=True)
class Verified:
    """A user whose password was checked: what authorisation needs."""

    name: str
    role: str
    user_id: int

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class CredentialCache:
    """(name, password) pairs verified in the last ``ttl`` seconds; thread-safe."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._key = os.urandom(32)
        self._entries: dict[bytes, tuple[float, Verified]] = {}
        self._lock = threading.Lock()

    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{len(name)}:{name}:{password}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).digest()

    def key(self, name: str, password: str) -> bytes:
        """The digest a pair is known by (the same pair, the same key; never the password itself)."""
        return self._digest(name, password)

    def get(self, name: str, password: str) -> Verified | None:
        """The user verified with exactly these credentials within the last ``ttl`` seconds, else None."""
        if self.ttl <= 0:
            return None
        key = self._digest(name, password)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, name: str, password: str, user: Verified) -> None:
        """Remember a successful verification."""
        if self.ttl <= 0:
            return
        key = self._digest(name, password)
        with self._lock:
            if len(self._entries) >= CACHE_MAX:
                self._entries.clear()
            # spread at random: entries made in the same second must not all expire in the same second
            self._entries[key] = (time.monotonic() + self.ttl * random.uniform(0.5, 1.0), user)


class Busy(BrokerError):
    """Raised when too many password checks are running or waiting: the caller should try again."""

    retryable = True
    status = "503 Service Unavailable"


class HashGate:
    """At most ``slots`` password checks at once, and at most ``threads`` request threads in the gate
    (checking or waiting to check).

    A login beyond those (or one that waited :data:`HASH_WAIT` seconds) is refused with :class:`Busy` at
    once, so the request threads it would have held stay free for calls that need no check.
    """

    def __init__(self, threads: int, slots: int = HASH_SLOTS, wait: float = HASH_WAIT):
        self._slots = threading.BoundedSemaphore(max(1, min(slots, threads)))
        self._room = threading.BoundedSemaphore(max(1, threads))
        self._wait = wait

    def run(self, check: Callable[[], T]) -> T:
        """The result of ``check()``, run when a slot is free. Raises Busy."""
        if not self._room.acquire(blocking=False):
            raise Busy("too many logins are being checked at once: try again in a moment")
        try:
            if not self._slots.acquire(timeout=self._wait):
                raise Busy("too many logins are being checked at once: try again in a moment")
            try:
                return check()
            finally:
                self._slots.release()
        finally:
            self._room.release()
