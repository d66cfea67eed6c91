"""The worker actor base class and a pool of identical workers.

A worker runs one action at a time in its own thread. Whatever happens, it answers: ``Done`` with the
result, or ``Failed`` with a one-line error and whether trying again may help. It never raises out of
``on_receive`` (pykka would stop the actor for good).
"""

from __future__ import annotations

import itertools
import threading
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pykka
from sqlalchemy.exc import DBAPIError

from broker.actions import Done, Failed, Work
from broker.errors import BrokerError
from broker.workers.context import WorkerContext

log = logging.getLogger(__name__)


class Worker(pykka.ThreadingActor):
    """Base of every worker: dispatches each action to its handler through :attr:`HANDLERS`."""

    #: action type -> handler(self, action) -> result
    HANDLERS: ClassVar[dict[type, Callable[..., Any]]] = {}

    def __init__(self, ctx: WorkerContext, closing: threading.Event | None = None):
        super().__init__()
        self.ctx = ctx
        #: set when the engine stops: work still queued here is dropped, not done (its intent is in the
        #: database, and the next broker recovers it), so stopping waits for the actions under way only
        self.closing = closing or threading.Event()

    def on_receive(self, message: Any) -> None:
        if not isinstance(message, Work):
            log.error("%s got a message that is not work: %r", type(self).__name__, message)
            return
        if self.closing.is_set():
            return
        action = message.action
        try:
            self.ctx.hold()  # every action acts outside the database: only while the lease is ours
            result = self.HANDLERS[type(action)](self, action)
        except BrokerError as exc:
            answer: Any = Failed(action, str(exc), retryable=exc.retryable)
        except OSError as exc:
            answer = Failed(action, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                            retryable=True)
        except DBAPIError as exc:  # a cut connection or a server restart: a fault to retry, not a bug to trace
            answer = Failed(action, "database unavailable: " + str(exc.orig or exc).strip().splitlines()[0],
                            retryable=True)
        except Exception as exc:  # a bug in a handler must not kill the worker
            log.exception("%s failed on %r", type(self).__name__, action)
            answer = Failed(action, f"internal error: {type(exc).__name__}: {exc}", retryable=False)
        else:
            answer = Done(action, result)
        try:
            message.reply_to.tell(answer)
        except pykka.ActorDeadError:  # the engine is stopping: controllers stop before their workers
            log.debug("%s: %s stopped before the answer to %r", type(self).__name__, message.reply_to, action)


class WorkerPool:
    """N workers of one kind, used round-robin."""

    def __init__(self, kind: str, worker_class: type[Worker], size: int, ctx: WorkerContext):
        self.kind = kind
        self.closing = threading.Event()
        self.refs = [worker_class.start(ctx, self.closing) for _ in range(max(1, size))]
        self._next = itertools.cycle(self.refs)

    def submit(self, action: Any, reply_to: pykka.ActorRef[Any]) -> None:
        """Hand an action to the next worker; dropped once the pool is closing (the engine is stopping)."""
        if self.closing.is_set():
            return
        try:
            next(self._next).tell(Work(action, reply_to))
        except pykka.ActorDeadError:  # stopped between the check and the tell
            log.debug("%s pool stopped before %r", self.kind, type(action).__name__)

    def next_ref(self) -> pykka.ActorRef[Any]:
        """The worker the next action goes to (for work handed over by the writer after a commit)."""
        return next(self._next)

    def stop(self) -> None:
        self.closing.set()
        for ref in self.refs:
            ref.stop(block=False)
        for ref in self.refs:
            try:
                ref.actor_stopped.wait(10)
            except Exception:  # already gone
                pass
