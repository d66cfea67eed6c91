"""The writer: the single actor that commits every state change (group commit).

Changes are told to the writer by the controllers. The first change of a burst schedules a flush marker
behind itself in the writer's own inbox; every change that arrives before the marker is reached joins the
same transaction. So under load one commit carries many changes, and when idle a change is committed at
once. Only after the commit are follow-ups delivered (a node's launch intent is durable before its
process starts) and the subscribers told what happened.

A batch of changes that nothing waits for (a node's start, its progress, a note: :func:`lingers`) waits up to
:data:`LINGER` for company before its commit: the end that usually follows within milliseconds shares it,
one commit instead of two. Anything else (an end, an intent, a command) is committed at once with whatever
waits.

One subscriber, the scheduler, is also asked before the commit (:class:`Admission`): when a transaction
frees slots or makes nodes ready, the writer shows it what the transaction did so far and waits (briefly)
for the launch intents it wants, which join the same transaction. A parent's end, its child's readiness
and the child's launch intent so cost one durable commit instead of two (one fsync less on every hand-off).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from broker import memory
from broker.crashpoints import crash_point
from broker.errors import LeaseLost
from broker.persistence.changes import Changes, Committed, Note, Reported, Transition
from broker.persistence.outcome import Outcome
from broker.persistence.store import Store
from broker.states import NodeState

log = logging.getLogger(__name__)

_FLUSH = object()
_LINGERED = object()
#: the marker behind which an Outcome's ``later`` changes wait (see Writer._later)
_LATER = object()

#: seconds a batch of changes nothing waits for may wait for others to share its commit
LINGER = 0.005
#: seconds the writer waits, its transaction open, for the scheduler's launch intents before it commits
#: without them (the scheduler then tells them as ordinary changes, committed next)
ADMIT_PATIENCE = 0.25

#: called in the writer thread after each commit with the fields of a WorkflowSummary (workflow id, global id,
#: state, counts) of each workflow the commit touched: keep it cheap
Listener = Callable[[int, str, Any, dict[str, int]], None]


class Subscribe:
    """Ask the writer to tell ``ref`` every Committed notification; ``admits``: ask it an :class:`Admission`
    before each commit that frees slots or readies nodes (the scheduler: one subscriber at most); ``only``:
    the Committed fields ``ref`` acts on, told only when one of them is not empty (a wasted wake-up of an
    actor's thread costs tens of microseconds a commit)."""

    __slots__ = ("ref", "admits", "only")

    def __init__(self, ref: pykka.ActorRef[Any], admits: bool = False, only: tuple[str, ...] = ()):
        unknown = set(only) - set(Committed.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Committed has no field {', '.join(sorted(unknown))}")
        self.ref = ref
        self.admits = admits
        self.only = only


class Admission:
    """What an open transaction did so far (``committed``: ready nodes, moves, tracked workflows), shown to
    the scheduler, which answers with the changes (launch intents) to add to the same transaction.

    The scheduler takes these moves into account at once; the Committed told after the commit carries
    ``token`` so that it does not count them twice. When the writer gave up waiting, :meth:`answer` says
    so and the scheduler tells its changes as usual: intents are never lost, only committed later.
    """

    __slots__ = ("token", "committed", "_cond", "_answer", "_abandoned", "heard")

    def __init__(self, token: int, committed: Committed):
        self.token = token
        self.committed = committed
        self._cond = threading.Condition()
        self._answer: list[Any] | None = None
        self._abandoned = False
        #: the scheduler got to it (in time or not)
        self.heard = False

    def answer(self, changes: list[Any]) -> bool:
        """From the scheduler: True when the writer takes ``changes`` into its transaction."""
        with self._cond:
            self.heard = True
            if self._abandoned:
                return False
            self._answer = changes
            self._cond.notify()
            return True

    def wait(self, timeout: float) -> list[Any]:
        """In the writer: the scheduler's changes, or none once ``timeout`` passed (then it tells them)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._answer is not None, timeout):
                self._abandoned = True
                return []
            return self._answer  # type: ignore[return-value]


def lingers(change: Any) -> bool:
    """Whether nothing waits for the commit of ``change``: no follow-up, no reply, no slot, not durable before
    anything else happens (a start is on disk in its attempt's launch record; recovery adopts it without
    this row)."""
    if isinstance(change, Transition):
        return change.to is NodeState.RUNNING and change.then is None and change.reply_to is None
    return isinstance(change, (Note, Reported))


class _Alarm:
    """One thread that calls ``ring`` once a delay has passed since :meth:`arm` (a timer without a thread each)."""

    def __init__(self, ring: Callable[[], None]):
        self._ring = ring
        self._cond = threading.Condition()
        self._due: float | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="broker-writer-linger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def arm(self, delay: float) -> None:
        with self._cond:
            if self._due is None:
                self._due = time.monotonic() + delay
                self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._due = None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (self._due is None or self._due > time.monotonic()):
                    self._cond.wait(None if self._due is None else self._due - time.monotonic())
                if self._stopped:
                    return
                self._due = None
            self._ring()


class Writer(pykka.ThreadingActor):
    def __init__(self, store: Store, listeners: list[Listener] | None = None):
        super().__init__()
        self.store = store
        self.listeners = list(listeners or ())
        self._pending: list[Any] = []
        #: changes committed after those that waited for the commit that asked for them (Outcome.later)
        self._later: list[Any] = []
        self._scheduled = False
        #: (actor, the Committed fields it acts on: () for all)
        self._subscribers: list[tuple[pykka.ActorRef[Any], tuple[str, ...]]] = []
        #: the scheduler, asked an Admission before commits that free slots or ready nodes
        self._admitter: pykka.ActorRef[Any] | None = None
        self._tokens = itertools.count(1)
        #: the last Admission the writer stopped waiting for, until the scheduler gets to it
        self._unheard: Admission | None = None
        #: a batch of lingering changes waits for the alarm (or for a change that cannot wait)
        self._lingering = False
        self._alarm = _Alarm(self._lingered)
        #: commits and changes so far, for the benchmark's figures
        self.commits = 0
        self.changes = 0

    def on_start(self) -> None:
        self._alarm.start()

    def _lingered(self) -> None:
        try:
            self.actor_ref.tell(_LINGERED)
        except pykka.ActorDeadError:  # stopped meanwhile: on_stop committed what waited
            pass

    def on_receive(self, message: Any) -> Any:
        if message is _FLUSH:
            self._flush()
        elif message is _LATER:
            # what came while the commit that asked for these ran goes first, then these alone: a big
            # submission's rows and its tracking are two waits for other users' changes, not one twice as long
            self._flush()
            self._pending, self._later = self._later + self._pending, []
            self._flush()
        elif message is _LINGERED:
            if self._lingering and not self._scheduled:  # otherwise a flush took them, or its marker will
                self._flush()
        elif isinstance(message, Subscribe):
            self._subscribers.append((message.ref, message.only))
            if message.admits:
                self._admitter = message.ref
        else:
            items = message.items if isinstance(message, Changes) else (message,)
            self._pending.extend(items)
            if self._scheduled:
                return None
            if LINGER > 0 and all(lingers(change) for change in items):
                if not self._lingering:
                    self._lingering = True
                    self._alarm.arm(LINGER)
            else:
                self._scheduled = True
                self.actor_ref.tell(_FLUSH)
        return None

    def on_stop(self) -> None:
        # changes told just before the stop have their flush marker behind the stop message: commit them now,
        # without asking the scheduler, stopped by then
        self._admitter = None
        self._alarm.stop()
        self._flush()
        if self._later:  # (their marker is behind the stop too)
            self._pending, self._later = self._later, []
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        if self._lingering:  # what lingered goes now: the next lingering change waits its own LINGER
            self._lingering = False
            self._alarm.disarm()
        changes, self._pending = self._pending, []
        if not changes:
            return
        started = time.perf_counter()
        try:
            out = self.store.commit(changes, admit=self._admit if self._admitter is not None else None)
        except LeaseLost:  # another broker holds the database now: on_lost has said so (and ended the process)
            log.debug("%d changes not committed: the lease is lost", len(changes))
            return
        except Exception:  # never let the writer die: it would stop the whole engine
            log.exception("writer failed to commit %d changes", len(changes))
            return
        self.store.commit_times.observe(time.perf_counter() - started)
        self.commits += 1
        self.changes += len(changes)
        self._deliver(out)
        if out.later:
            self._later.extend(out.later)
            self.actor_ref.tell(_LATER)  # behind every change already told
        freed = out.freed
        del out, changes  # what a big workflow's commit held goes before the trim, or the trim cannot free it
        if freed >= memory.BIG_NODES:
            memory.trim()

    def _admit(self, committed: Committed) -> tuple[list[Any], int | None]:
        """Ask the scheduler for the changes to add to the open transaction; (changes, token)."""
        if self._unheard is not None and not self._unheard.heard:
            # busy with something long (a huge workflow's end, say): every commit meanwhile would wait
            # ADMIT_PATIENCE in vain; it hears of these moves after the commit, as before admissions
            return [], None
        admission = Admission(next(self._tokens), committed)
        try:
            self._admitter.tell(admission)  # type: ignore[union-attr]
        except pykka.ActorDeadError:  # stopping: the next broker schedules from the database
            self._admitter = None
            return [], None
        changes = admission.wait(ADMIT_PATIENCE)
        self._unheard = None if admission.heard else admission
        return changes, admission.token

    def _deliver(self, out: Outcome) -> None:
        # listeners first: whoever gets a reply next must find them up to date
        for summary in out.summaries:
            for listener in self.listeners:
                try:
                    listener(*summary)
                except Exception:
                    log.exception("progress listener failed")
        committed = out.committed
        if (committed.ready or committed.moved or committed.tracked or committed.workflows or committed.kill
                or committed.resume):
            for ref, only in self._subscribers:
                if not only or any(getattr(committed, field) for field in only):
                    _tell(ref, committed)
        if out.followups:
            crash_point("launch-intent")
        for ref, message in out.followups:
            _tell(ref, message)
        for ref, message in out.replies:
            _reply(ref, message)


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Tell, tolerating an actor that has already stopped (only during shutdown)."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        log.debug("%s stopped before it could be told %r", ref, type(message).__name__)


def _reply(target: Any, message: Any) -> None:
    """Replies go to an actor (tell) or to a pykka future / callable set up by an edge caller."""
    if isinstance(target, pykka.ActorRef):
        _tell(target, message)
    elif hasattr(target, "set"):
        target.set(message)
    else:
        target(message)
