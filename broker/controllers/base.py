"""The controller base class: a typed inbox dispatched through a registry, and resilience.

Each controller declares ``HANDLERS``, a dict from message type to method. A handler never blocks (no
``.get()`` on other actors, no I/O: that is what workers are for) and an exception in one message never
stops the controller: it is logged and, when the message concerns a node, recorded on it as a failure
with an event; then the controller carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pykka

from broker.actions import OWNER, WORKER, Done, Failed, NodeRef, Work
from broker.controllers.messages import Peers, Quiesce
from broker.persistence.changes import Transition
from broker.states import NodeState
from broker.workers.pool import WorkerPool

log = logging.getLogger(__name__)


class Controller(pykka.ThreadingActor):
    #: this controller's name in broker.actions.OWNER
    NAME: ClassVar[str] = ""
    #: message type -> handler(self, message)
    HANDLERS: ClassVar[dict[type, Callable[..., None]]] = {}
    #: action type -> handler(self, action, result) for Done answers
    ON_DONE: ClassVar[dict[type, Callable[..., None]]] = {}
    #: action type -> handler(self, action, failed) for Failed answers
    ON_FAILED: ClassVar[dict[type, Callable[..., None]]] = {}

    def __init__(self, writer: pykka.ActorRef[Any], pools: dict[str, WorkerPool]):
        super().__init__()
        self.writer = writer
        self.pools = pools
        self.peers: dict[str, pykka.ActorRef[Any]] = {}
        #: set by Quiesce when the engine stops: no new work is handed to workers or peers (the database
        #: keeps the intent; the next broker picks it up), answers to work under way are still recorded
        self.quiet = False

    def dispatch(self, action: Any) -> None:
        """Send an action this controller owns to a worker of the right kind (none once quiesced)."""
        if OWNER[type(action)] != self.NAME:
            raise TypeError(f"{self.NAME} does not own {type(action).__name__}")
        if self.quiet:
            return
        self.pools[WORKER[type(action)]].submit(action, self.actor_ref)

    def tell_peer(self, name: str, message: Any) -> None:
        """Tell another controller (none once quiesced: it may already have stopped)."""
        if self.quiet:
            return
        try:
            self.peers[name].tell(message)
        except pykka.ActorDeadError:  # stopping: the next broker rebuilds this work from the database
            log.debug("%s: %s stopped before it could be told %r", self.NAME, name, type(message).__name__)

    def after_commit(self, action: Any) -> tuple[pykka.ActorRef[Any], Work]:
        """A follow-up for the writer: once the change is committed, the action goes straight to a worker,
        and the answer to the action's owner (one hop instead of two on the hand-off path)."""
        owner = OWNER[type(action)]
        reply_to = self.actor_ref if owner == self.NAME else self.peers[owner]
        return self.pools[WORKER[type(action)]].next_ref(), Work(action, reply_to)

    def on_receive(self, message: Any) -> None:
        try:
            if isinstance(message, Done):
                self.ON_DONE[type(message.action)](self, message.action, message.result)
            elif isinstance(message, Failed):
                self.ON_FAILED[type(message.action)](self, message.action, message)
            elif isinstance(message, Peers):
                self.peers.update(message.refs)
            elif isinstance(message, Quiesce):
                self.quiet = True
            else:
                self.HANDLERS[type(message)](self, message)
        except Exception as exc:  # never let one message stop the controller
            log.exception("%s controller failed on %r", self.NAME, message)
            self._record_failure(message, exc)

    def _record_failure(self, message: Any, exc: Exception) -> None:
        """Fail the node a message was about, with an event saying why, if there is one."""
        ref = _node_of(message)
        if ref is None:
            return
        self.writer.tell(Transition(node_id=ref.node_id, to=NodeState.FAILED, actor=self.NAME, attempt=ref.attempt,
                                    message=f"internal error in the {self.NAME} controller: "
                                            f"{type(exc).__name__}: {exc}"))


def _node_of(message: Any) -> NodeRef | None:
    for candidate in (message, getattr(message, "action", None)):
        ref = getattr(candidate, "node", None)
        if isinstance(ref, NodeRef):
            return ref
    return None
