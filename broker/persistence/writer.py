"""The writer: the single actor that commits every state change (group commit).

Changes are told to the writer by the controllers. The first change of a burst schedules a flush marker
behind itself in the writer's own inbox; every change that arrives before the marker is reached joins the
same transaction. So under load one commit carries many changes, and when idle a change is committed at
once. Only after the commit are follow-ups delivered (a node's launch intent is durable before its
process starts) and the subscribers told what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pykka

from broker import memory
from broker.crashpoints import crash_point
from broker.errors import LeaseLost
from broker.persistence.changes import Changes
from broker.persistence.store import Outcome, Store

log = logging.getLogger(__name__)

_FLUSH = object()

#: called in the writer thread after each commit with the fields of a WorkflowSummary (workflow id, global id,
#: state, counts) of each workflow the commit touched: keep it cheap
Listener = Callable[[int, str, Any, dict[str, int]], None]


class Subscribe:
    """Ask the writer to tell ``ref`` every Committed notification."""

    __slots__ = ("ref",)

    def __init__(self, ref: pykka.ActorRef[Any]):
        self.ref = ref


class Writer(pykka.ThreadingActor):
    def __init__(self, store: Store, listeners: list[Listener] | None = None):
        super().__init__()
        self.store = store
        self.listeners = list(listeners or ())
        self._pending: list[Any] = []
        self._scheduled = False
        self._subscribers: list[pykka.ActorRef[Any]] = []
        #: commits and changes so far, for the benchmark's figures
        self.commits = 0
        self.changes = 0

    def on_receive(self, message: Any) -> Any:
        if message is _FLUSH:
            self._flush()
        elif isinstance(message, Subscribe):
            self._subscribers.append(message.ref)
        else:
            if isinstance(message, Changes):
                self._pending.extend(message.items)
            else:
                self._pending.append(message)
            if not self._scheduled:
                self._scheduled = True
                self.actor_ref.tell(_FLUSH)
        return None

    def on_stop(self) -> None:
        # changes told just before the stop have their flush marker behind the stop message: commit them now
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        changes, self._pending = self._pending, []
        if not changes:
            return
        started = time.perf_counter()
        try:
            out = self.store.commit(changes)
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
        freed = out.freed
        del out, changes  # what a big workflow's commit held goes before the trim, or the trim cannot free it
        if freed >= memory.BIG_NODES:
            memory.trim()

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
            for ref in self._subscribers:
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
