"""Who is calling: authentication against the users table and elf sessions, and the authorisation rules.

Identity comes only from the transport: HTTP Basic or a WS-Security UsernameToken, checked by the edge
before spyne sees the request. An operation then asks :func:`require_admin`, :func:`scope_of` or
:func:`user_scope`; a user sees only their own workflows, nodes and events, and naming another user in an
argument is refused (NotAuthorized) unless the caller is an admin.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.api.passwords import Busy, CredentialCache, HashGate, Verified, hash_password, verify_password
from broker.errors import InvalidCredentials, NotAuthorized
from broker.persistence.elfsessions import ElfIdentity, verify_session
from broker.persistence.models import User

log = logging.getLogger(__name__)

#: WSGI environ keys the edge sets for the services
USER_KEY = "broker.user"
ELF_KEY = "broker.elf"


class Authenticator:
    """Checks user passwords (through the credential cache) and elf session secrets.

    A pair missing from the cache is checked once however many threads present it at the same time: the
    first checks it, the others wait for its answer (a client's parallel calls after its login expired). The
    checks themselves go through a :class:`HashGate` that at most half the request threads may be in, so
    the other half always serve calls whose login is cached.
    """

    def __init__(self, sessions: sessionmaker[Session], ttl: float, threads: int = 8):
        self.sessions = sessions
        self.cache = CredentialCache(ttl)
        self.gate = HashGate(threads // 2)
        self._lock = threading.Lock()
        #: cache key -> the check of that pair in progress
        self._checks: dict[bytes, _Check] = {}

    def user(self, name: str, password: str) -> Verified:
        """The user with these credentials. Raises InvalidCredentials, or Busy when too many are checked."""
        cached = self.cache.get(name, password)
        if cached is not None:
            return cached
        key = self.cache.key(name, password)
        with self._lock:
            check = self._checks.get(key)
            first = check is None
            if first:
                check = self._checks[key] = _Check()
        if not first:
            return check.answer()
        try:
            check.user = self.gate.run(lambda: self._verify(name, password))
            self.cache.put(name, password, check.user)
            return check.user
        except BaseException as exc:
            check.error = exc
            raise
        finally:
            with self._lock:
                del self._checks[key]
            check.done.set()

    def _verify(self, name: str, password: str) -> Verified:
        with self.sessions() as s:
            row = s.execute(select(User.id, User.name, User.role, User.password_hash)
                            .where(User.name == name)).first()
        # the slow hash runs for unknown users too, so the answer time does not tell which names exist
        stored = row.password_hash if row is not None else _dummy_hash()
        if not verify_password(password, stored) or row is None:
            raise InvalidCredentials("wrong user name or password")
        return Verified(row.name, row.role, row.id)

    def elf(self, session_id: str, secret: str) -> ElfIdentity:
        """The node attempt of an elf session. Raises InvalidCredentials."""
        with self.sessions() as s:
            return verify_session(s, session_id, secret)


class _Check:
    """One password check in progress, which other threads with the same credentials wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.user: Verified | None = None
        self.error: BaseException | None = None

    def answer(self) -> Verified:
        """The check's answer once it is known (each waiter raises its own copy of the error)."""
        self.done.wait()
        if self.user is not None:
            return self.user
        if isinstance(self.error, (InvalidCredentials, Busy)):
            raise type(self.error)(str(self.error))
        raise RuntimeError("the password check of another call with these credentials failed") from self.error


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the user does not exist (computed once)."""
    return hash_password("not a password anyone has")


# ------------------------------------------------------------------------------------- authorisation

def caller(environ: dict[str, Any]) -> Verified:
    """The authenticated user of a call (the edge guarantees one for every user operation)."""
    user = environ.get(USER_KEY)
    if user is None:  # an elf session calling a user operation
        raise NotAuthorized("this operation needs a user's credentials, not an elf session")
    return user


def require_admin(user: Verified, operation: str) -> None:
    """Raise NotAuthorized unless the caller is an admin."""
    if not user.admin:
        raise NotAuthorized(f"{operation} needs the admin role; user {user.name!r} does not have it")


def scope_of(user: Verified) -> int | None:
    """The owner id a user's reads are limited to; None (everything) for an admin."""
    return None if user.admin else user.user_id


def named_user(user: Verified, name: str | None, operation: str) -> str:
    """The user an operation names (the caller when None); another user's name needs the admin role."""
    if name is None or name == "" or name == user.name:
        return user.name
    if not user.admin:
        raise NotAuthorized(f"{operation}: user {user.name!r} may not act on user {name!r}'s workflows")
    return name
