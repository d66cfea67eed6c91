"""The outbox relay: publishes committed events on the bus in order, and marks them sent after the receipt.

The engine's writer commits every event together with one outbox row per destination (broker.events.
routing), in the same transaction as the state change. The relay is an actor of its own that reads unsent
rows in id order, publishes them and marks them sent, so publishing never blocks a controller or a
request thread: a slow, full or absent bus only backs the relay off while rows accumulate.

One round (the relay's unit of work):

1. read up to ``window`` unsent rows in id order (one short read; the partial index ix_outbox_unsent),
2. send them as persistent messages in one bus transaction (BEGIN, SEND..., COMMIT asking for a receipt)
   without waiting between frames; meanwhile read and render the next window,
3. wait (at most ``receipt_timeout``) for the COMMIT's receipt: the bus has stored the whole window,
4. hand the next window's BEGIN and SENDs to the bus, uncommitted, so that it parses them meanwhile,
5. mark the window sent, in one UPDATE; the next round starts with the next window's COMMIT.

Order: ids follow commit order and one workflow's events are committed in sequence order, so each
workflow's events go out in order. A row is never marked before the receipt of its window, nor a window
committed before the one ahead of it is marked. A window that is not confirmed (timeout, lost connection,
refusal) was not delivered at all (the bus discards an uncommitted transaction, the staged one included),
or, if the receipt alone was lost, was delivered whole: the next round sends it again from its first row.
Consumers may see a message twice (same event id, same body), never a later event of a workflow before an
earlier one. Marking rows sent is the relay's own write (``outbox.sent_at``): short transactions with the
database's busy timeout, one per window. A crash between the receipt and the mark republishes that window
after the restart (crash point ``relay-published``); the staged one was never committed.

The relay wakes up when the writer commits (:meth:`OutboxRelay.wake` is a writer Listener), and every
``poll_interval`` for rows written by other processes. It reconnects with exponential backoff and jitter;
STOMP heart-beats notice a silent bus. While it backs off it probes the bus every ``probe_interval`` (a TCP
connection, no login: cheap for both sides), so a bus that refused connections is reconnected to within about
``probe_interval`` of its return however long the outage was (one that refuses the login keeps the full
backoff). On stop it publishes for at most ``stop_timeout`` (not at all when the bus is known to be down);
``broker run`` and ``broker resume`` instead wait up to ``exit_drain_timeout`` for the outbox to drain, so
that consumers have the final events when the command has exited.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import pykka
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from broker.config import EventsSettings
from broker.crashpoints import crash_point
from broker.errors import ConfigError
from broker.events.buses import open_publisher
from broker.events.doorbell import PUMP, Doorbell
from broker.events.outbox import OutboxSQL, Row, count_unsent, mark_sent
from broker.events.publishers import BusError, Message, Publisher
from broker.events.rounds import Content, Prepared, backoff_delay, read_window, refused

log = logging.getLogger(__name__)

#: seconds one PUMP may go on publishing windows of a backlog before the actor reads its inbox (a stop)
ROUND_BUDGET = 0.5

#: called with (outbox ids, time.monotonic()) when the bus confirmed them (benchmarks, metrics)
ConfirmedHook = Callable[[Sequence[int], float], None]


class Relay(pykka.ThreadingActor):
    """The actor that publishes the outbox (see the module docstring)."""

    def __init__(self, settings: EventsSettings, sessions: sessionmaker[Session], publisher: Publisher,
                 doorbell: Doorbell, on_confirmed: ConfirmedHook | None = None, exit_drain: bool = False):
        super().__init__()
        self.settings = settings
        #: on stop, wait for the outbox to drain (exit_drain_timeout, through outages) rather than stop_timeout
        self.exit_drain = exit_drain
        self.sessions = sessions
        self.outbox = OutboxSQL(sessions)
        self.publisher = publisher
        self.doorbell = doorbell
        self.on_confirmed = on_confirmed
        #: failures in a row (connection, receipts, database); 0 when the last round went through
        self.failures = 0
        self._not_before = 0.0
        #: monotonic time the backoff ends (the probes may end it sooner)
        self._retry_at = 0.0
        #: failures not counted in the backoff: those before the bus was found to be back
        self._backoff_base = 0
        #: the bus was found refusing connections since the last attempt to connect (at it, or by a probe)
        self._seen_down = False
        self._serial = 0
        #: while > 0: a window was refused; rows up to this outbox id go one by one
        self._narrow_until = 0
        #: the next window, read while the bus stored the last one
        self._prefetched: list[Prepared] | None = None
        #: (transaction, rows): the next window, on the bus but not committed yet (:meth:`_stage`)
        self._staged: tuple[str, list[Prepared]] | None = None
        #: outbox id -> refusals so far
        self._refusals: dict[int, int] = {}
        self.published = self.skipped = 0

    def on_start(self) -> None:
        self.doorbell.ref = self.actor_ref
        self.doorbell.start()

    def on_receive(self, message: Any) -> Any:
        if message is PUMP:
            not_before, more = 0.0, False
            busy_until = time.monotonic() + ROUND_BUDGET
            try:
                # a backlog goes window after window without a trip through the doorbell's thread each time
                while True:
                    not_before, more = self._round(self.settings.receipt_timeout)
                    if not more or not_before or time.monotonic() >= busy_until:
                        break
            except Exception:  # never let the actor die: it would stop publishing for good
                log.exception("event relay round failed")
                # whatever the round did not finish is done again: not after the next window, so discard it
                self._prefetched = self._staged = None
                self.publisher.close()
                not_before = self._failed("internal error (see above)")
            self.doorbell.done(not_before, more)
        return None

    def on_stop(self) -> None:
        self.doorbell.stop()
        wait = self.settings.exit_drain_timeout if self.exit_drain else self.settings.stop_timeout
        try:
            self._drain(time.monotonic() + wait)
        finally:
            self.publisher.close()

    def on_failure(self, *exc_info: Any) -> None:
        self.doorbell.stop()
        self.publisher.close()  # a staged window is discarded with the connection

    # -------------------------------------------------------------------------------------- one round

    def _round(self, receipt_timeout: float, connect_timeout: float | None = None) -> tuple[float, bool]:
        """Publish one window. Returns (monotonic time before which not to try again, whether rows remain)."""
        waiting = self._probe()
        if waiting:
            return waiting, False
        prefetched, self._prefetched = self._prefetched, None
        staged, self._staged = self._staged, None
        if not self.publisher.connected():
            prefetched = staged = None  # a staged transaction died with its connection
            try:
                self.publisher.connect(self.settings.connect_timeout if connect_timeout is None else connect_timeout)
            except BusError as exc:
                return self._failed(str(exc)), False
            if self.failures:
                log.info("event bus %s reachable again: publishing the events that waited", self.settings.url)
            else:
                log.info("event relay connected to %s", self.settings.url)
        # while a refused event is looked for or retried, rows go one by one (see _publish)
        narrow = bool(self._refusals) or self._narrow_until > 0
        window = 1 if narrow else self.settings.window
        staged_tx = None
        if staged is not None:  # (never while rows go one by one: see _stage)
            staged_tx, window_rows = staged
        elif prefetched is not None and not narrow:
            window_rows = prefetched
        else:
            try:
                window_rows = read_window(self.outbox, window)
            except SQLAlchemyError as exc:
                return self._failed(f"cannot read the outbox: {exc}"), False
        if not window_rows:
            self.failures = self._backoff_base = 0
            return 0.0, False
        done, problem = self._publish(window_rows, receipt_timeout, len(window_rows) >= window, staged_tx)
        if done:
            if any(row.event.workflow_id is not None for row, _ in window_rows):
                crash_point("relay-published")  # (a window of service events alone is not the tests' case)
            if problem is None:
                self._stage()  # the bus parses the next window while this one is marked
            try:
                mark_sent(self.outbox, done, dt.datetime.now(dt.timezone.utc))
            except SQLAlchemyError as exc:
                # they go out again after the backoff (same ids and bodies), before the staged window (discarded)
                self._prefetched = self._staged = None
                self.publisher.close()
                return self._failed(f"cannot mark {len(done)} events sent: {exc}"), False
        if problem is not None:
            self._prefetched = self._staged = None
            self.publisher.close()
            return self._failed(problem), False
        self.failures = self._backoff_base = 0
        if self._narrow_until and done and done[-1] >= self._narrow_until:
            self._narrow_until = 0  # every row of the refused window is settled
        return 0.0, len(window_rows) >= window or narrow or bool(self._prefetched) or self._staged is not None

    def _publish(self, rows: list[Prepared], receipt_timeout: float, prefetch: bool,
                 staged: str | None = None) -> tuple[list[int], str | None]:
        """Send a window and wait for its receipt: (ids that may be marked, in order; why the rest may not).

        The window is one bus transaction, confirmed as a whole by its COMMIT's receipt (see broker.events.
        publishers). While the bus stores a full window, the next one is read and rendered (``prefetch``); it
        is sent only after this one is confirmed (:meth:`_stage`), so a failed window is never overtaken by a
        later one. When the bus refuses a message, the window fails as a whole; its rows are then sent one
        window each until the refused one is found (and retried, or skipped: :func:`refused`). ``staged``:
        the transaction of these rows, already on the bus (:meth:`_stage`): only its COMMIT is sent.
        """
        if staged is None:
            self._serial += 1
        tx = staged or f"w{self._serial}"
        sendable = [(row, content) for row, content in rows if content is not None]
        commit = f"{tx}-commit" if sendable else None
        problem = None
        skipped = None
        try:
            if commit is not None:
                if staged is None:
                    self._send(tx, sendable)
                self.publisher.commit(tx, commit)
        except BusError as exc:  # the transaction dies with the connection: nothing of it was published
            problem, commit = str(exc), None
        if commit is not None and prefetch:
            self._prefetch(rows[-1][0].outbox_id)
        answer = self.publisher.wait([commit], receipt_timeout) if commit is not None else None
        # nothing to send (every row excluded by routing) counts as a confirmed, empty window
        committed = (commit is None and problem is None) or (answer is not None and answer.confirmed(commit or ""))
        if answer is not None and not committed:
            refusal = answer.errors[0] if answer.errors else answer.rejected.get(commit or "")
            problem = refusal or answer.failure or "no receipt for the commit"
            if refusal is not None and len(sendable) == 1:
                if refused(self._refusals, sendable[0][0], refusal, self.settings.max_rejections):
                    # skipped for good: settled (marked) like the rows around it, never published
                    committed, problem, skipped = True, None, sendable[0][0].outbox_id
                    self.skipped += 1
            elif refusal is not None:
                log.warning("the bus refused a message of a window of %d (%s): publishing them one by one to "
                            "find it", len(sendable), refusal)
                self._narrow_until = rows[-1][0].outbox_id
        if committed and skipped is None and self.on_confirmed is not None:
            self.on_confirmed([row.outbox_id for row, _ in sendable], time.monotonic())
        done = []
        for row, content in rows:
            if content is None:
                log.warning("event %s is not published to %s: its workflow's level or routing excludes it "
                            "(an outbox row written by another broker version?)", row.event.event_id,
                            row.destination)
                self.skipped += 1
            elif not committed:
                break
            elif row.outbox_id != skipped:
                self._refusals.pop(row.outbox_id, None)
                self.published += 1
            done.append(row.outbox_id)
        if problem is None and len(done) < len(rows):
            problem = "window not confirmed"
        return done, problem

    def _send(self, tx: str, sendable: list[tuple[Row, Content]]) -> None:
        """BEGIN a transaction and SEND these rows in it (not committed)."""
        self.publisher.begin(tx)
        for row, (headers, body) in sendable:
            self.publisher.send(Message(row.destination, headers, body), tx)

    def _stage(self) -> None:
        """Hand the prefetched window to the bus as an uncommitted transaction, while the one it confirmed is
        marked: the bus parses and holds its messages meanwhile (its work and the mark overlap), and delivers
        them only at the COMMIT, which the next round sends after the mark. Not while rows go one by one."""
        rows = self._prefetched or []
        sendable = [(row, content) for row, content in rows if content is not None]
        if not sendable or self._refusals or self._narrow_until:
            return
        self._serial += 1
        tx = f"w{self._serial}"
        try:
            self._send(tx, sendable)
            self.publisher.flush(tx)
        except BusError:
            return  # the connection is gone: the next round connects again and reads the window again
        self._prefetched, self._staged = None, (tx, rows)

    def _prefetch(self, after: int) -> None:
        """Read and render the next window now, while the bus is busy storing this one."""
        try:
            self._prefetched = read_window(self.outbox, self.settings.window, after) or None
        except SQLAlchemyError:
            return  # the next round reads again

    def _probe(self) -> float:
        """Before connecting while backing off: 0.0 to connect now, else the monotonic time of the next round.

        Within the backoff the bus is probed each ``probe_interval``: one that refused connections and now
        accepts them has come back, and is connected to at once (the backoff starts over from there).
        """
        now = time.monotonic()
        if not self.failures or now >= self._retry_at:
            return 0.0
        if self.publisher.connected():  # not the bus's failure (the database): wait out the backoff
            self._not_before = self._retry_at
            return self._not_before
        interval = max(self.settings.probe_interval, 0.01)
        if not self.publisher.reachable(min(self.settings.connect_timeout, interval)):
            self._seen_down = True
            self._not_before = min(self._retry_at, time.monotonic() + interval)
            return self._not_before
        if not self._seen_down:
            # it accepted connections at the last attempt too (login refused, still starting): back off
            self._not_before = self._retry_at
            return self._not_before
        self._backoff_base = self.failures
        return 0.0

    def _failed(self, reason: str) -> float:
        """Record a failure; the monotonic time of the next round: the backoff's end (exponential, with
        jitter), or the next probe of the bus before it (see :meth:`_probe`)."""
        self.failures += 1
        interval = max(self.settings.probe_interval, 0.01)
        # whether the bus refused connections at this failure: then a probe that finds it accepting them
        # means it came back (a bus refusing the login accepts connections all along)
        self._seen_down = not self.publisher.connected() and not self.publisher.reachable(
            min(self.settings.connect_timeout, interval))
        delay = backoff_delay(self.failures - self._backoff_base, self.settings.reconnect_initial,
                              self.settings.reconnect_max, random.random())
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "event relay: %s; events wait in the outbox; next try in %.1f s (failure %d in a row)",
                reason, delay, self.failures)
        now = time.monotonic()
        self._retry_at = now + delay
        self._not_before = min(self._retry_at, now + interval)
        return self._not_before

    # ------------------------------------------------------------------------------------------- stop

    def _drain(self, deadline: float) -> None:
        """On stop: go on publishing until nothing is left, the bus fails (unless ``exit_drain``: then it
        waits for the bus, with the usual backoff), or the deadline passes."""
        while (left := deadline - time.monotonic()) > 0:
            if self._not_before > time.monotonic():  # backing off after a failure
                if not self.exit_drain:
                    break  # the bus is known to be down: do not make the stop wait for it
                # this actor is stopping, nothing else waits for it
                time.sleep(min(self._not_before, deadline) - time.monotonic())
                continue
            not_before, more = self._round(min(self.settings.receipt_timeout, left),
                                           min(self.settings.connect_timeout, left))
            if not more and not not_before:
                break
        try:
            with self.sessions() as s:
                unsent = count_unsent(s)
        except SQLAlchemyError:
            return
        if unsent:
            log.info("event relay stopped with %d events unsent: they are published after the next start", unsent)


class OutboxRelay:
    """The engine's handle on the relay: build it, pass :meth:`wake` to the writer, start, stop."""

    def __init__(self, settings: EventsSettings, sessions: sessionmaker[Session], publisher: Publisher,
                 on_confirmed: ConfirmedHook | None = None, exit_drain: bool = False):
        """``exit_drain``: on stop, wait up to ``exit_drain_timeout`` for the outbox to drain (broker run)."""
        self.settings = settings
        self.sessions = sessions
        self.publisher = publisher
        self.on_confirmed = on_confirmed
        self.exit_drain = exit_drain
        self.doorbell = Doorbell(settings.poll_interval, settings.batch_delay)
        self.ref: pykka.ActorRef[Relay] | None = None

    @classmethod
    def from_settings(cls, settings: EventsSettings, sessions: sessionmaker[Session],
                      on_confirmed: ConfirmedHook | None = None, exit_drain: bool = False) -> OutboxRelay | None:
        """The relay of ``[events]``; None when no bus is configured. Raises ConfigError for a bad URL."""
        if not settings.url.strip():
            return None
        if settings.window < 1:
            raise ConfigError(f"[events] window: must be at least 1, got {settings.window}")
        return cls(settings, sessions, open_publisher(settings), on_confirmed, exit_drain)

    def wake(self, *_: Any) -> None:
        """A writer Listener: something was committed, publish it soon (cheap; any arguments ignored)."""
        self.doorbell.ring()

    def start(self) -> OutboxRelay:
        """Start the actor (it connects and publishes in its own thread)."""
        self.ref = Relay.start(self.settings, self.sessions, self.publisher, self.doorbell, self.on_confirmed,
                               self.exit_drain)
        return self

    def stop(self) -> int | None:
        """Stop: publish what is left for at most ``stop_timeout`` s (``exit_drain_timeout`` with
        ``exit_drain``), then disconnect. Returns how many outbox rows are left unsent (None: unknown)."""
        ref, self.ref = self.ref, None
        if ref is not None:
            try:
                ref.stop()
            except pykka.ActorDeadError:
                pass
        try:
            with self.sessions() as s:
                return count_unsent(s)
        except SQLAlchemyError:
            return None
