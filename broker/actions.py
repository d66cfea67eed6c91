"""Actions: the typed units of work controllers hand to worker actors.

Each action is a frozen dataclass; its type decides which controller owns it (:data:`OWNER`) and which
kind of worker does it (:data:`WORKER`). A test checks that every action type has exactly one owner and
one worker kind. Workers answer with :class:`Done` or :class:`Failed` to the controller that dispatched
the action; they never change state themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from broker.launchers.base import LaunchHandle


@dataclass(frozen=True, slots=True)
class NodeRef:
    """Which node and attempt an action is about, with what is needed to find its spec."""

    node_id: int
    workflow_id: int
    workflow_global_id: str
    #: node path, e.g. ``sweep[3]/step``
    path: str
    #: the node's spec path in the plan (its key in ``plan.templates``), e.g. ``sweep/step``
    spec_path: str
    attempt: int
    #: parameter bindings visible to the node, outer sweeps first
    bindings: tuple[tuple[str, str], ...] = ()
    member_index: int | None = None
    #: the catalogue host the attempt runs on
    host: str = "localhost"
    #: the broker user who owns the workflow (nodes run under that user's account on the host)
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Expand:
    """Resolve a ready parameterized node's values and build its members."""

    node: NodeRef


@dataclass(frozen=True, slots=True)
class Launch:
    """Render the payload and start one attempt."""

    node: NodeRef


@dataclass(frozen=True, slots=True)
class LaunchBundle:
    """Start several members of one sweep as one batch job (the sweep's bundle size), or as one job array."""

    nodes: tuple[NodeRef, ...]
    #: a job array (one task per member) instead of one job running the members itself
    array: bool = False
    #: an array's tasks that may run at once (0: the scheduler's choice)
    throttle: int = 0

    def only(self, node_ids: frozenset[int]) -> LaunchBundle:
        """The bundle without the members not in ``node_ids`` (their launch intents were refused)."""
        return dataclasses.replace(self, nodes=tuple(ref for ref in self.nodes if ref.node_id in node_ids))


@dataclass(frozen=True, slots=True)
class StageIn:
    """Copy a node's input files into its work directory before launch."""

    node: NodeRef


@dataclass(frozen=True, slots=True)
class StageOut:
    """Copy a succeeded node's output files out of its work directory."""

    node: NodeRef
    #: the attempt, for a remote one whose outputs are fetched from its host first
    handle: LaunchHandle | None = None


@dataclass(frozen=True, slots=True)
class Collect:
    """Read the result of an attempt that has ended."""

    handle: LaunchHandle


@dataclass(frozen=True, slots=True)
class ReadReports:
    """Read the progress and outputs a running payload reported since ``offset``."""

    handle: LaunchHandle
    offset: int


@dataclass(frozen=True, slots=True)
class Recover:
    """Find out what became of an attempt that was in flight when the previous broker died."""

    node: NodeRef
    state: str
    workdir: str | None
    job_id: str | None


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill a running attempt (cancel)."""

    handle: LaunchHandle


@dataclass(frozen=True, slots=True)
class PollControl:
    """Read control commands (cancel, restart) left in the database by other processes."""

    after_id: int


Action = (Expand | Launch | LaunchBundle | StageIn | StageOut | Collect | ReadReports | Recover | Kill
          | PollControl)

#: the controller that owns each action type: it hears the worker's answer and changes state after it
OWNER: dict[type, str] = {
    Expand: "submission",
    # dispatched by the submission controller once the launch intent is committed; the monitoring
    # controller hears the answer, because from then on it follows the attempt
    Launch: "monitoring",
    LaunchBundle: "monitoring",
    PollControl: "submission",
    StageIn: "staging",
    StageOut: "staging",
    Collect: "monitoring",
    ReadReports: "monitoring",
    Recover: "monitoring",
    Kill: "monitoring",
}

#: the kind of worker that performs each action type
WORKER: dict[type, str] = {
    Expand: "expand",
    Launch: "launch",
    LaunchBundle: "launch",
    PollControl: "poll",
    StageIn: "stage",
    StageOut: "stage",
    Collect: "poll",
    ReadReports: "poll",
    Recover: "poll",
    Kill: "cancel",
}


@dataclass(frozen=True, slots=True)
class Work:
    """An action on its way to a worker, with where the answer goes."""

    action: Any
    reply_to: Any

    def only(self, node_ids: frozenset[int]) -> Work:
        """This work for some of its action's nodes only (see broker.persistence.changes.AfterIntents)."""
        return Work(self.action.only(node_ids), self.reply_to)


@dataclass(frozen=True, slots=True)
class Done:
    action: Any
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failed:
    action: Any
    error: str
    #: whether the same action may succeed if tried again (broker.errors.BrokerError.retryable)
    retryable: bool = False
