"""A standby ``broker serve`` on PostgreSQL: it waits while another broker holds the lease, and says when it may
take over.

The standby never claims anything while it waits: it reads the lease row every ``[engine] standby_poll``
seconds on a connection of its own (named ``broker standby on HOST, pid N``, never the holder's name, so a
takeover's fencing of the old holder's connections never ends it). Once the row is free (released, expired, or
held by a process gone from this machine) :meth:`Standby.wait` returns, and the engine then claims the lease as
any starting broker does (:meth:`broker.persistence.lease.Lease.acquire`); when another standby won the race,
the claim raises BrokerLocked and the caller waits again. So a takeover comes at most ``lease_timeout +
standby_poll`` seconds after the active broker's last renewal (at once, at the next poll, when it died on
this machine), plus the engine's start.

A free lease is not taken when:

- the database is at another schema revision than this broker's code (its head revision): a standby left at
  an old version after an upgrade must not write with old code (nor a new one into an old schema); this is
  checked at every look, so it is said as soon as the standby starts waiting;
- the lease was last held on another machine and ``[engine] standby_takeover = refuse``: the attempts that
  broker started on its local host can only be adopted from that machine.

Either is said once (one WARNING line, again only when the reason changes) and the standby goes on waiting,
still answering ``/health`` with ``standby``: the database may be brought to its revision, or a broker
restarted on the other machine takes the lease as usual.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from sqlalchemy.exc import DBAPIError

from broker.errors import ConfigError
from broker.persistence.db import current_revision, display_url, driver_message, make_engine, revision_problem
from broker.persistence.lease import NAME_BYTES, _machine, current_holder, is_free, read

log = logging.getLogger("broker.persistence.lease")

#: values of [engine] standby_takeover
TAKEOVER_MODES = ("remote-only", "refuse")


def check_takeover(mode: str) -> str:
    """The mode, or ConfigError naming the valid ones."""
    if mode not in TAKEOVER_MODES:
        raise ConfigError(f"[engine] standby_takeover: invalid value {mode!r} (expected one of "
                          f"{', '.join(TAKEOVER_MODES)})")
    return mode


class Standby:
    """Watches the lease of a PostgreSQL database for a broker that is not its holder."""

    def __init__(self, url: str, engine_settings: object, stop: threading.Event):
        """``engine_settings``: the [engine] section (standby_poll, standby_takeover); ``stop``: set to give up."""
        self.mode = check_takeover(getattr(engine_settings, "standby_takeover"))
        self.poll = float(getattr(engine_settings, "standby_poll"))
        if self.poll <= 0:
            raise ConfigError(f"[engine] standby_poll must be above 0 (got {self.poll:g})")
        self.url = url
        self.where = display_url(url)
        self.stop = stop
        self.machine = _machine()
        name = f"broker standby on {socket.gethostname()}, pid {os.getpid()}".encode()[:NAME_BYTES]
        self._engine = make_engine(url, pool_size=1, application_name=name.decode(errors="ignore"))
        #: the last reason said for not taking over (said once, again only when it changes)
        self._said: str | None = None

    def holder(self) -> str | None:
        """Who holds the lease now (a live or stopped broker whose lease has not expired), or None (also when the
        lease cannot be read: the engine's start then says why, as without a standby)."""
        try:
            return current_holder(self._engine)
        except DBAPIError:
            return None

    def wait(self) -> bool:
        """Return True once this broker may claim the lease, False when ``stop`` was set first."""
        while True:
            reason = self._reason()
            if reason is None:
                return True
            if reason and reason != self._said:
                log.warning("standby: %s", reason)
                self._said = reason
            if self.stop.wait(self.poll):
                return False

    def _reason(self) -> str | None:
        """Why the lease may not be claimed now: "" while it is held, a sentence for a refusal, None: go."""
        try:
            # the revision first, even while the lease is held: a standby that could never take over says so at once
            problem = revision_problem(current_revision(self._engine), self.url)
            with self._engine.connect() as conn:
                row = read(conn)
        except DBAPIError as exc:
            return f"cannot read the lease on {self.where} ({driver_message(exc)}); trying again"
        if problem is not None:
            return f"not taking over: {problem}"
        if row is not None and not is_free(row, self.machine):
            return ""
        if self.mode == "refuse" and row is not None and row.machine and row.machine != self.machine:
            return (f"not taking over the lease on {self.where} from {row.holder or 'a broker that stopped'}: it "
                    f"ran on another machine, whose local attempts only a broker there can adopt ([engine] "
                    f"standby_takeover = refuse)")
        return None

    def close(self) -> None:
        self._engine.dispose()


__all__ = ["Standby", "TAKEOVER_MODES", "check_takeover"]
