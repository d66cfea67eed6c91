"""Password hashes (scrypt, salted) and the short-lived cache of credentials already verified.

A password hash costs tens of milliseconds on purpose (it slows down anyone who steals the database). An
API client sends its password with every call, so a verified (name, password) pair is remembered for
``[api] credential_ttl`` seconds, keyed by a keyed digest of the pair: the cache never holds a password.
A changed password or role takes effect within that time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass

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
            self._entries[key] = (time.monotonic() + self.ttl, user)
