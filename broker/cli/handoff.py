"""``broker run`` and ``broker resume`` while another broker holds the database: hand the workflow over.

The description is checked here first (same messages and exit codes as a run of its own). Then a request row
(:mod:`broker.persistence.requests`) asks the holder to submit (or resume) the workflow; the holder takes it
only if it runs this user's local payloads as this very account (a ``broker run`` of the same account, a
``broker serve`` whose mapping gives the user this account), otherwise this command exits 3 naming it. Once
taken, the workflow is followed to its end by reading the database: the same progress display, summary and
exit code as a run of its own. Ctrl-C cancels it (a cancel request), a second one stops following at once
(the workflow goes on in the holder). ``--detach`` returns once the holder has taken it, printing its id.

A ``broker run`` holder does not exit while workflows handed to it are unfinished (:func:`serve_handed`): it
waits for them after its own, still taking new ones, so a detached workflow is never left without a broker.
When the holder stops anyway (a second Ctrl-C, SIGTERM, a crash), a follower takes the database over as soon
as it is free: it starts an engine of its own, which recovers as a restart does (running payloads adopted),
tracks its workflow and every other unfinished one handed over by the same account, and from then on is the
holder (and waits for those the same way).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from broker.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK
from broker.printable import printable

#: seconds the holder has to take a request before this command gives up (and withdraws it)
ACCEPT_TIMEOUT = 60.0
#: seconds to wait for the holder's writer_info row (it writes it just after taking the database)
HOLDER_WAIT = 5.0
#: seconds between two reads of the followed workflow
FOLLOW_POLL = 0.25
#: seconds between two looks at whether the database is free (to take it over)
TAKEOVER_POLL = 1.0
#: a request's answer: run here after all (the holder went away before taking it)
RUN_HERE = -1


def hand_over(settings: Any, args: Any, *, kind: str, owner: str, payload: dict[str, Any],
              workflow_gid: str | None, name: str | None, announce: Any, start_engine: Any, locked: str) -> int:
    """Hand a submit or resume to the broker holding the database and follow it; the exit code, or RUN_HERE.
    ``locked``: the line that said the database is held (for a holder that takes no workflows)."""
    from broker import runas
    from broker.cli.common import reader
    from broker.persistence import requests
    from broker.persistence.db import display_url

    account = runas.own_login()
    where = display_url(settings.database_url())
    with reader(settings) as sessions:
        info = _holder(sessions, settings)
        if info is None:
            if not _held(settings):
                return RUN_HERE
            # a command holding the lock for a moment (broker cancel, broker admin), or an older broker
            print(printable(f"broker: {locked}; it takes no workflows from other processes: try again once it "
                            "has ended"), file=sys.stderr)
            return EXIT_ERROR
        if info.runs_as == "own" and info.account != account:
            print(printable(f"broker: another broker holds {where}: {info.holder}, which runs payloads as account "
                            f"'{info.account}', not as yours ('{account}'): it cannot run your workflow; wait for "
                            "it to end, or use another database (--db)"), file=sys.stderr)
            return EXIT_ERROR
        with sessions.begin() as s:
            request_id = requests.insert(s, kind, f"user:{owner}", payload, account=account,
                                         workflow_gid=workflow_gid)
        print(printable(f"handing the workflow to {info.holder}, which holds {where}"), file=sys.stderr, flush=True)
        try:
            row = requests.wait(sessions, request_id, ACCEPT_TIMEOUT, give_up=_every(TAKEOVER_POLL, settings))
        except KeyboardInterrupt:  # Ctrl-C before the workflow was taken: take the request back, or cancel
            _abandon(sessions, request_id, owner, account)
            raise
        if row is None:
            if not _held(settings):
                return RUN_HERE  # withdrawn: the holder went away before taking it
            print(printable(f"broker: {info.holder} did not take the workflow within {ACCEPT_TIMEOUT:g} s "
                            "(request withdrawn)"), file=sys.stderr)
            return EXIT_ERROR
        if row.state != requests.APPLIED:
            return _refused(row, info.holder)
        workflow_id, gid = int(row.result["workflow_id"]), str(row.result["global_id"])
        from broker.cli.signals import Interrupts

        # Ctrl-C handled from before the workflow is announced: one that comes as soon as the caller sees the
        # "submitted" line cancels it, as in a run of its own, instead of ending this process
        with Interrupts() as signals:
            done_before = announce(sessions, workflow_id, gid, name)
            if getattr(args, "detach", False):
                print(f"detached: workflow {gid} runs in {printable(info.holder)}; follow it with `broker status "
                      f"{gid}` or `broker events {gid} --follow`")
                return EXIT_OK
            return Follower(settings, sessions, owner, account, start_engine).follow(workflow_id, gid, done_before,
                                                                                     signals)


def _abandon(sessions: Any, request_id: int, owner: str, account: str) -> None:
    """Withdraw a request not taken yet; once taken, ask for the workflow's cancel instead."""
    from broker.persistence import requests

    with sessions.begin() as s:
        if requests.withdraw(s, request_id):
            return
    row = requests.wait(sessions, request_id, ACCEPT_TIMEOUT)
    if row is not None and row.state == requests.APPLIED and row.result:
        with sessions.begin() as s:
            requests.insert(s, "cancel", f"user:{owner}", {"workflow_id": int(row.result["workflow_id"]),
                                                          "node_ids": None}, account=account)


def _refused(row: Any, holder: str) -> int:
    from broker.persistence import requests

    if row.state == requests.FAILED and row.reason == requests.INVALID:
        for line in (row.error or "").splitlines():
            print(printable(line), file=sys.stderr)
        return EXIT_INVALID
    if row.state == requests.FAILED and row.reason == requests.ACCOUNT:
        print(printable(f"broker: cannot hand the workflow over: {row.error}"), file=sys.stderr)
        return EXIT_ERROR
    print(printable(f"broker: {holder} could not take the workflow: {row.error or row.state}"), file=sys.stderr)
    return EXIT_ERROR


def _every(seconds: float, settings: Any) -> Any:
    """A give_up() for requests.wait: whether the database is free, asked at most every ``seconds`` (on
    PostgreSQL each look is a new connection)."""
    next_look = [time.monotonic() + seconds]

    def free() -> bool:
        if time.monotonic() < next_look[0]:
            return False
        next_look[0] = time.monotonic() + seconds
        return not _held(settings)

    return free


def readable(settings: Any) -> bool:
    """Wait until the database can be read at this broker's revision (a holder that has just created it may
    still be migrating it); False when the holder went away meanwhile."""
    from sqlalchemy.exc import DBAPIError

    from broker.cli.common import reader
    from broker.errors import BrokerError
    from broker.persistence import requests

    deadline = time.monotonic() + HOLDER_WAIT
    while True:
        try:
            with reader(settings) as sessions, sessions() as s:
                requests.writer_info(s)
            return True
        except (BrokerError, DBAPIError):
            if not _held(settings):
                return False
            if time.monotonic() >= deadline:
                raise
        time.sleep(FOLLOW_POLL)  # a poll interval while the holder migrates the database


def _held(settings: Any) -> bool:
    from broker.persistence.lock import broker_running

    return broker_running(settings.database_url())


def _holder(sessions: Any, settings: Any) -> Any:
    """The holder's writer_info row, waiting a little for a broker that has just taken the database; None when
    none appears (no broker holds it any more, or one that writes no such row)."""
    from broker.persistence import requests

    deadline = time.monotonic() + HOLDER_WAIT
    while True:
        with sessions() as s:
            info = requests.writer_info(s)
            if info is not None and _current(info, settings):
                s.expunge(info)
                return info
        if time.monotonic() >= deadline or not _held(settings):
            return None
        time.sleep(FOLLOW_POLL)  # a poll interval while the new holder starts


def _current(info: Any, settings: Any) -> bool:
    """Whether the row is the current holder's (not one left by a broker killed before it could remove it)."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url())
    if url.get_backend_name() == "sqlite":
        import os

        try:
            with open(os.path.abspath(url.database) + ".lock") as fh:
                return fh.read().strip() == str(info.pid)
        except (OSError, TypeError):
            return False
    from broker.persistence.db import make_engine
    from broker.persistence.lease import current_holder

    engine = make_engine(url, pool_size=1)
    try:
        return current_holder(engine) == info.holder
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------- follow

class Follower:
    """Follows a handed-over workflow to its end from the database; takes the database over if it is freed."""

    def __init__(self, settings: Any, sessions: Any, owner: str, account: str, start_engine: Any):
        self.settings, self.sessions, self.owner, self.account = settings, sessions, owner, account
        self.start_engine = start_engine
        self.engine: Any = None
        self._next_try = 0.0

    def follow(self, workflow_id: int, gid: str, done_before: int, signals: Any) -> int:
        """Follow to the end; ``signals``: the caller's active :class:`broker.cli.signals.Interrupts`."""
        from broker.cli import startup_over
        from broker.cli.progress import Display, print_summary
        from broker.errors import BrokerError
        from broker.states import WORKFLOW_TERMINAL

        startup_over()  # from here on the process may run for hours

        display = Display(sys.stderr, tty=sys.stderr.isatty(), done_before=done_before)
        cancelling, last = False, None
        pause = threading.Event()  # never set: its wait is the poll interval, cut short by nothing
        try:
            while True:
                snapshot = self._snapshot(workflow_id)
                if signals.interrupts >= 2 or signals.terminated:
                    self._stop_now(display, gid)
                    return EXIT_INTERRUPTED
                if signals.interrupts == 1 and not cancelling:
                    cancelling = True
                    display.note("cancelling... press Ctrl-C again to stop at once")
                    if snapshot.state not in WORKFLOW_TERMINAL:
                        self._cancel(workflow_id, display)
                display.update(snapshot, [snapshot] if last is None or last.state != snapshot.state else [])
                last = snapshot
                if snapshot.state in WORKFLOW_TERMINAL:
                    break
                if self.engine is None:
                    self._take_over(workflow_id, display)
                elif not self.engine.writer.is_alive():
                    display.clear()
                    raise BrokerError("the engine's writer stopped unexpectedly (see the log above)")
                pause.wait(FOLLOW_POLL)
            display.clear()
            state = print_summary(self.sessions, workflow_id, wall=display.elapsed(), done_before=done_before,
                                  out=sys.stdout)
            if self.engine is not None:
                serve_handed(self.engine)
        finally:
            if self.engine is not None:
                self.engine.stop()
        if cancelling:
            return EXIT_INTERRUPTED
        return EXIT_OK if state == "succeeded" else EXIT_INVALID

    def _snapshot(self, workflow_id: int) -> Any:
        from broker.cli.common import node_counts
        from broker.cli.progress import Snapshot
        from broker.persistence.models import Workflow

        with self.sessions() as s:
            state = s.get(Workflow, workflow_id).state
            counts = node_counts(s, [workflow_id])[workflow_id]
        return Snapshot(state, counts)

    def _stop_now(self, display: Any, gid: str) -> None:
        if self.engine is not None:
            display.note(f"stopping now; payloads still running keep running: `broker resume {gid}` re-attaches "
                         "to them")
            return  # follow()'s finally stops the engine
        display.note(f"stopped following workflow {gid}; it stays with the broker holding the database "
                     f"(`broker status {gid}`)")

    def _cancel(self, workflow_id: int, display: Any) -> None:
        from broker.errors import BrokerError
        from broker.persistence import requests

        try:
            if self.engine is not None:
                self.engine.cancel(workflow_id, f"user:{self.owner}")
                return
            with self.sessions.begin() as s:
                requests.insert(s, "cancel", f"user:{self.owner}", {"workflow_id": workflow_id, "node_ids": None},
                                account=self.account)
        except BrokerError as exc:  # the display goes on: the workflow may still end by itself
            display.note(f"could not cancel: {exc}")

    def _take_over(self, workflow_id: int, display: Any) -> None:
        """Once the database is free: start an engine here, which runs this workflow and the others this
        account handed over (a restart's recovery adopts their running payloads)."""
        from broker.errors import BrokerLocked
        from broker.persistence import requests
        from broker.persistence.models import Workflow

        now = time.monotonic()
        if now < self._next_try:
            return
        self._next_try = now + TAKEOVER_POLL
        if _held(self.settings):
            return
        with self.sessions() as s:
            work_root = s.get(Workflow, workflow_id).work_root
            others = [(i, g) for i, g in requests.handed_unfinished(s, self.account) if i != workflow_id]
        try:
            engine = self.start_engine(work_root)
        except BrokerLocked:  # another follower was quicker: it runs this workflow too
            return
        self.engine = engine
        display.note("the broker holding the database has stopped: this one takes it over")
        engine.track(workflow_id)
        for other_id, other_gid in others:
            engine.track(other_id)
            engine.applier.handed.add(other_gid)


def serve_handed(engine: Any) -> None:
    """Before a ``broker run`` holder stops: wait until the workflows handed to it have ended (taking new ones
    meanwhile). Ctrl-C or SIGTERM stops at once: their followers take the database over."""
    from broker.cli.signals import Interrupts

    applier = engine.applier
    if applier is None:
        return
    told = False
    pause = threading.Event()  # never set: its wait is the poll interval
    with Interrupts() as signals:
        while True:
            left = applier.unfinished_handed()
            if not left:
                applier.pause(True)  # take no new one, and let those sent be committed, then look again
                left = applier.unfinished_handed()
                if not left:
                    return
                applier.pause(False)
            if not told:
                told = True
                shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
                print(printable(f"broker: waiting for {len(left)} workflow(s) handed to this broker to end before "
                                f"releasing the database: {shown} (Ctrl-C: stop now; their `broker run` take "
                                "the database over)"), file=sys.stderr, flush=True)
            if signals.interrupts or signals.terminated or not engine.writer.is_alive():
                print("broker: stopping now; the workflows handed to this broker go on when their `broker run` "
                      "takes the database over, or with `broker resume ID`", file=sys.stderr, flush=True)
                return
            pause.wait(FOLLOW_POLL)
