"""Messages between controllers (their typed inboxes besides worker answers and writer notifications)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

from broker.actions import NodeRef
from broker.launchers.base import AttemptResult, LaunchHandle


@dataclass(frozen=True, slots=True)
class Tick:
    """Sent by the engine's clock to every controller (timers, polls)."""

    now: float


@dataclass(frozen=True, slots=True)
class Watch:
    """An attempt has started: the monitoring controller follows it from now on."""

    handle: LaunchHandle
    node: NodeRef
    #: the node's state when handed over ("queued" normally, "running" when adopted after a restart)
    state: str = "queued"
    #: whether the attempt was started by an earlier broker and found running by this one
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class Exited:
    """The launcher saw an attempt end (exit, timeout kill or cancel kill)."""

    node_id: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Collected:
    """The launcher saw an attempt end and read its result."""

    handle: LaunchHandle
    result: Any


@dataclass(frozen=True, slots=True)
class Pushed:
    """What an elf reported for its attempt through updateNodeStatus (the push channel).

    The monitoring controller takes it as it takes what it reads from the attempt's files: progress and
    outputs as reports, an end as the attempt's result, so a pushed and a polled result finish alike.
    """

    node_id: int
    attempt: int
    #: the latest progress: (percent, message)
    progress: tuple[float, str | None] | None = None
    #: output properties: (name, JSON value)
    outputs: tuple[tuple[str, Any], ...] = ()
    #: the attempt's result when the elf reported its end; None for RUNNING, PROGRESS, OUTPUT
    result: AttemptResult | None = None
    #: the pusher's receipt: ``tell(None)`` once the report is committed or needs nothing, ``set(reason)``
    #: when it is ignored, ``via(follow_up)`` routes a transition's follow-up through it
    receipt: Any = None


class Receipt:
    """The pusher's side of a Pushed message (the API, or the applier of a push request): learns that its
    report was committed, or why it was ignored."""

    def __init__(self) -> None:
        self.forward: Any = None
        self.done = threading.Event()
        self.rejected: str | None = None

    def via(self, follow_up: tuple[Any, Any] | None) -> tuple[Any, Any]:
        """A transition's follow-up routed through this receipt: it passes the message on once committed."""
        if follow_up is None:
            return self, None
        self.forward = follow_up[0]
        return self, follow_up[1]

    def tell(self, message: Any) -> None:  # committed (the follow-up), or nothing to commit
        if self.forward is not None and message is not None:
            self.forward.tell(message)
        self.done.set()

    def set(self, message: Any) -> None:  # ignored: the writer's Rejected, or the controller's reason
        self.rejected = getattr(message, "reason", str(message))
        self.done.set()


@dataclass(frozen=True, slots=True)
class Peers:
    """Introduces the controllers to each other once all have started: name -> actor ref."""

    refs: dict[str, Any]


class StagingAttempt(NamedTuple):
    """An attempt that was copying files in or out when the previous broker stopped."""

    node: NodeRef
    #: "staging_in" or "staging_out"
    state: str
    workdir: str | None
    job_id: str | None
    #: the host as recorded (``login@host`` once the attempt ran remotely)
    host: str | None


@dataclass(frozen=True, slots=True)
class Resume:
    """Attempts that were in flight when the previous broker stopped, to be recovered."""

    nodes: tuple[StagingAttempt, ...]


@dataclass(frozen=True, slots=True)
class Quiesce:
    """Sent by the engine when it stops: start no new work (answers are still recorded), so that the workers
    can be stopped before the controllers and no answer is sent to a stopped controller."""
