"""Who is calling: authentication against the users table and elf sessions, and the authorisation rules.

Identity comes only from the transport: HTTP Basic or a WS-Security UsernameToken, checked by the edge
before spyne sees the request. An operation then asks :func:`require_admin`, :func:`scope_of` or
:func:`user_scope`; a user sees only their own workflows, nodes and events, and naming another user in an
argument is refused (NotAuthorized) unless the caller is an admin.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.api.passwords import CredentialCache, Verified, hash_password, verify_password
from broker.api.sessions import ElfIdentity, verify_session
from broker.errors import InvalidCredentials, NotAuthorized
from broker.persistence.models import User

log = logging.getLogger(__name__)

#: WSGI environ keys the edge sets for the services
USER_KEY = "broker.user"
ELF_KEY = "broker.elf"


class Authenticator:
    """Checks user passwords (through the credential cache) and elf session secrets."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float):
        self.sessions = sessions
        self.cache = CredentialCache(ttl)

    def user(self, name: str, password: str) -> Verified:
        """The user with these credentials. Raises InvalidCredentials."""
        cached = self.cache.get(name, password)
        if cached is not None:
            return cached
        with self.sessions() as s:
            row = s.execute(select(User.id, User.name, User.role, User.password_hash)
                            .where(User.name == name)).first()
        # the slow hash runs for unknown users too, so the answer time does not tell which names exist
        stored = row.password_hash if row is not None else _dummy_hash()
        if not verify_password(password, stored) or row is None:
            raise InvalidCredentials("wrong user name or password")
        user = Verified(row.name, row.role, row.id)
        self.cache.put(name, password, user)
        return user

    def elf(self, session_id: str, secret: str) -> ElfIdentity:
        """The node attempt of an elf session. Raises InvalidCredentials."""
        with self.sessions() as s:
            return verify_session(s, session_id, secret)


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
