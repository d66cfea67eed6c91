"""Elf sessions: the credentials a remote elf pushes its attempt's status with (``updateNodeStatus``).

The resources layer creates a session when it launches an attempt somewhere the broker cannot watch
directly, and hands the id and secret to the elf (command line or environment). The elf then calls
``updateNodeStatus(sessionId, status, output[])`` with a WS-Security UsernameToken whose Username is the
session id (decimal) and whose Password is the secret. A session names one node attempt: reports through a
session of an attempt that is no longer current are ignored (stale).

The secret is 256 random bits, so a salted SHA-256 is enough to keep it unusable if the database leaks
(a slow hash protects guessable passwords; nobody guesses 256 random bits). No spyne here: importing this
module must stay cheap for the resources layer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.errors import InvalidCredentials, NotFound
from broker.persistence.models import ElfSession, Node, utcnow

#: bytes of randomness in a session secret
SECRET_BYTES = 32
#: largest session id (the wire type is a signed 32-bit xs:int)
MAX_SESSION_ID = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ElfIdentity:
    """An authenticated elf session: which node attempt it may report on."""

    session_id: int
    node_id: int
    attempt: int


def _digest(secret: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode("utf-8", "surrogatepass")).hexdigest()


def create_session(sessions: sessionmaker[Session], node_id: int, attempt: int) -> tuple[int, str]:
    """Create the push-channel session of one node attempt; returns ``(session_id, secret)``.

    The secret is shown only here (the database keeps a salted hash). Raises NotFound for an unknown node.
    """
    secret = secrets.token_urlsafe(SECRET_BYTES)
    salt = secrets.token_hex(16)
    with sessions.begin() as s:
        if s.get(Node, node_id) is None:
            raise NotFound(f"no node with id {node_id}")
        row = ElfSession(node_id=node_id, attempt=attempt, secret_hash=f"sha256${salt}${_digest(secret, salt)}",
                         created_at=utcnow())
        s.add(row)
        s.flush()
        session_id = row.id
    if session_id > MAX_SESSION_ID:  # pragma: no cover - 2**31 sessions
        raise OverflowError("elf session ids have run past 2**31 - 1")
    return session_id, secret


def verify_session(s: Session, session_id: int | str, secret: str) -> ElfIdentity:
    """The node attempt of a session whose secret matches. Raises InvalidCredentials otherwise."""
    try:
        number = int(session_id)
    except (TypeError, ValueError):
        raise InvalidCredentials("an elf session id is a number") from None
    if not 0 < number <= MAX_SESSION_ID:
        raise InvalidCredentials("unknown elf session or wrong secret")
    row = s.execute(select(ElfSession.node_id, ElfSession.attempt, ElfSession.secret_hash)
                    .where(ElfSession.id == number)).first()
    if row is None or not secret:
        raise InvalidCredentials("unknown elf session or wrong secret")
    scheme, salt, digest = row.secret_hash.split("$")
    if scheme != "sha256" or not hmac.compare_digest(_digest(secret, salt), digest):
        raise InvalidCredentials("unknown elf session or wrong secret")
    return ElfIdentity(number, row.node_id, row.attempt)
