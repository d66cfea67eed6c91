"""Login sessions of the dashboard: a random token in a cookie, the user and a CSRF token in memory.

Only a digest of the token is kept, so a memory dump does not hand out live cookies. A session ends at
logout, after :data:`IDLE` seconds without a request, or :data:`LIFETIME` seconds after the login, whichever
comes first; a restart of ``broker serve`` ends every session (users log in again). The role is the one
checked at login: a changed role takes effect at the next login.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: seconds a session lives without a request
IDLE = 3600.0
#: seconds a session lives at most after its login
LIFETIME = 12 * 3600.0
#: most sessions held; beyond it the oldest go first (bounds memory under a flood of logins)
MAX_SESSIONS = 10_000
#: the session cookie's name
COOKIE = "broker_ui"


@dataclass(slots=True)
class Session:
    """One logged-in browser."""

    #: the user as verified at login (broker.api.passwords.Verified)
    user: Any
    #: the token every form of this session carries (compared in constant time)
    csrf: str
    started: float
    seen: float = field(default=0.0)

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


class Sessions:
    """Token digest -> Session; thread-safe."""

    def __init__(self, idle: float = IDLE, lifetime: float = LIFETIME, capacity: int = MAX_SESSIONS,
                 clock: Any = time.monotonic):
        self.idle, self.lifetime, self.capacity, self.clock = idle, lifetime, capacity, clock
        self._lock = threading.Lock()
        self._sessions: dict[bytes, Session] = {}

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def open(self, user: Any) -> str:
        """A new session for ``user``; returns the cookie's token."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            while len(self._sessions) >= self.capacity:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[self._key(token)] = Session(user, secrets.token_urlsafe(32), now, now)
        return token

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its idle clock restarts), or None."""
        if not token or len(token) > 100:
            return None
        key = self._key(token)
        now = self.clock()
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if now - session.seen > self.idle or now - session.started > self.lifetime:
                del self._sessions[key]
                return None
            session.seen = now
            return session

    def close(self, token: str | None) -> None:
        """Logout: the token is no longer valid."""
        if token:
            with self._lock:
                self._sessions.pop(self._key(token), None)
