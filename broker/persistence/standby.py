"""A standby ``broker serve`` on PostgreSQL: it waits while another broker holds the lease, and says when it may
take over.

The standby never claims anything while it waits: it reads the lease row every ``[engine] standby_poll``
seconds on a connection of its own (named ``broker standby on HOST, pid N``, never the holder's name, so a
takeover's fencing of the old holder's connections never ends it). Once the row is free (released, expired, or
held by a process gone from this machine) :meth:`Standby.wait` returns its epoch, and the engine then claims
the lease (:meth:`broker.persistence.lease.Lease.acquire`), that epoch only: when another broker claimed it
meanwhile (another standby won the race, or its holder came back), the claim raises BrokerLocked at once and the
caller waits again, judging the new holder as the first. ``broker serve`` makes the same judgement when it
starts (but for the revision, which its engine checks), so a broker started while the lease is free follows
the same rules as one that waited. So a takeover comes at most ``lease_timeout +
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
from broker.persistence.lease import NAME_BYTES, _machine, is_free, read

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
        #: who held the lease at the last look (None: nobody, or it could not be read)
        self.holder: str | None = None
        #: why this broker waits, as of the last look: the holder is active, or a refusal (then ``refusing``)
        self.why = ""
        self.refusing = False

    def look(self) -> tuple[bool, int | None]:
        """What ``broker serve`` does now, starting or after a lost claim: (True, None) wait as a standby
        (:attr:`why` says why), else (False, the epoch to claim; None: any, when the lease cannot be read: the
        engine's start then says why, as without a standby). The revision is not judged here: the engine's
        start migrates an older database itself and refuses a newer one with the same words."""
        try:
            epoch, reason = self._judge(revision=False)
        except DBAPIError:
            return False, None
        if epoch is None:
            self._said = reason or None  # the caller says it, with its announcement: not again while it holds
            return True, None
        return False, epoch

    def wait(self) -> int | None:
        """The lease's epoch once this broker may claim it (the engine then claims that epoch only), None when
        ``stop`` was set first."""
        while True:
            try:
                epoch, reason = self._judge()
            except DBAPIError as exc:
                epoch, reason = None, f"cannot read the lease on {self.where} ({driver_message(exc)}); trying again"
            if epoch is not None:
                return epoch
            self._say(reason)
            if self.stop.wait(self.poll):
                return None

    def _say(self, reason: str) -> None:
        if reason and reason != self._said:
            log.warning("standby: %s", reason)
            self._said = reason

    def _judge(self, *, revision: bool = True) -> tuple[int | None, str]:
        """(the epoch to claim, "") or (None, why not: "" while the lease is held, else a sentence). Raises
        DBAPIError when the database cannot be read."""
        # the revision first, even while the lease is held: a standby that could never take over says so at once
        problem = revision_problem(current_revision(self._engine), self.url) if revision else None
        with self._engine.connect() as conn:
            row = read(conn)
        self.holder = None if row is None else (row.holder or "a broker that stopped")
        self.refusing = True
        if problem is not None:
            self.why = f"not taking over: {problem}"
            return None, self.why
        if row is None:
            return 0, ""  # deleted by hand: the claim puts the free row (epoch 0) back
        if not is_free(row, self.machine):
            self.why = f"{self.holder} is active on {self.where}; taking over when its lease is free"
            self.refusing = False
            return None, ""
        if self.mode == "refuse" and row.machine and row.machine != self.machine:
            self.why = (f"not taking over the lease on {self.where} from {self.holder}: it ran on another machine, "
                        f"whose local attempts only a broker there can adopt ([engine] standby_takeover = refuse)")
            return None, self.why
        # judged on this row: the claim takes this epoch or none, since another broker may claim the lease (and
        # then lose it) between this read and the claim, and its machine has not been judged
        return int(row.epoch), ""

    def close(self) -> None:
        self._engine.dispose()


__all__ = ["Standby", "TAKEOVER_MODES", "check_takeover"]
