"""The launcher interface: what the engine asks of every compute resource.

A launcher is used from worker actor threads (``launch``, ``collect``, ``cancel``, ``recover`` may block
on I/O) and must be thread-safe. It never touches the database: it reports facts back through return
values and the ``on_exit`` callback, and the controllers turn them into state transitions.

Every attempt of a node has its own work directory (see broker.ids for the naming), in which the
compute side keeps the files that let a restarted broker find out what happened while it was away.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.description.model import Scheduling

#: outcomes of a finished attempt
SUCCEEDED = "succeeded"      # exit code 0
FAILED = "failed"            # non-zero exit code, or the payload could not start
TIMEOUT = "timeout"          # killed by the launcher after the node's timeout
CANCELLED = "cancelled"      # killed because the node or workflow was cancelled
LOST = "lost"                # gone without a result (e.g. killed by someone else while the broker was down)

#: seconds before the resident agent of an account (and host) where it could not start is tried again; meanwhile
#: its payloads start as without it, under wb-run.sh locally and under an elf on SSH hosts
AGENT_RETRY = 600.0


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    """Everything needed to start one attempt of one node."""

    node_id: int
    attempt: int
    workflow_global_id: str
    #: node path, e.g. ``sweep[3]/step``
    node_path: str
    #: absolute path of this attempt's work directory (created by the launcher)
    workdir: str
    #: "sh", "bash", "python" or "csh"
    payload_type: str
    #: the rendered payload text
    payload_text: str
    #: interpreter command overriding the type's default
    interpreter: str | None = None
    #: variables added to the payload's environment: profile env, then the broker's WB_* variables
    env: tuple[tuple[str, str], ...] = ()
    #: working directory for the payload: relative to ``workdir`` or absolute; None = ``workdir``
    cwd: str | None = None
    #: seconds; the launcher kills the payload's whole process group past it
    timeout: float | None = None
    #: where and how the elf also pushes its status: (updateNodeStatus URL, session id, secret); None: it does not
    push: tuple[str, int, str] | None = None


@dataclass(frozen=True, slots=True)
class LaunchHandle:
    """A started attempt, enough to watch, collect, cancel or re-attach to it."""

    node_id: int
    attempt: int
    workdir: str
    #: process id (local) or batch job id
    job_id: str
    #: host the attempt runs on
    host: str = "localhost"
    #: epoch seconds when the launcher started it
    started_at: float = 0.0
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """One ``@broker`` line a payload printed."""

    #: "progress", "output" or "spawn"
    kind: str
    #: progress percent (0..100) for "progress"
    percent: float | None = None
    #: progress message, or output property name for "output"
    text: str | None = None
    #: the decoded JSON value of an output property
    value: Any = None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    node_id: int
    attempt: int
    #: one of SUCCEEDED, FAILED, TIMEOUT, CANCELLED, LOST
    outcome: str
    exit_code: int | None = None
    #: output properties reported by the payload: name -> JSON value
    outputs: dict[str, Any] = field(default_factory=dict)
    #: last progress reported: (percent, message)
    progress: tuple[float, str | None] | None = None
    #: one line saying what happened ("exit code 3", "killed after timeout of 5 s", ...)
    message: str = ""
    #: the workflow fragment a succeeded payload spawned (``@broker spawn FILE``), None if it spawned none
    spawn: Spawned | None = None


@dataclass(frozen=True, slots=True)
class Spawned:
    """A fragment named by ``@broker spawn``: its text, or why it could not be read (never both)."""

    file: str
    text: str | None = None
    error: str | None = None


def spawned(entry: Any) -> Spawned | None:
    """The Spawned of a status file's (or the local launcher's) ``spawn`` entry; None when there is none."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    text, error = entry.get("text"), entry.get("error")
    if not isinstance(text, str):
        return Spawned(entry["file"], None, str(error or "no fragment text"))
    return Spawned(entry["file"], text)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What a restarted broker found for an attempt that was in flight when the previous one died."""

    #: "finished" (result set), "running" (handle set: adopt it), "absent" (never started: launch it
    #: again under the same attempt), or "lost" (started, then vanished without a result)
    status: str
    result: AttemptResult | None = None
    handle: LaunchHandle | None = None
    #: for "lost": why, when there is more to say than that it vanished
    message: str | None = None


#: called from a launcher thread when an attempt ends (exit, timeout kill or cancel kill): (node_id, attempt)
ExitCallback = Callable[[int, int], None]


class Launcher(Protocol):
    """What every launcher provides."""

    def launch(self, request: LaunchRequest, scheduling: Scheduling | None = None) -> LaunchHandle:
        """Prepare the work directory and start the attempt; return once it has started (or raise).

        ``scheduling``: the node's scheduling profile, which batch launchers write the job from (the
        others start the payload directly and ignore it).
        """

    def launch_bundle(self, requests: Sequence[LaunchRequest],
                      scheduling: Scheduling | None = None) -> list[LaunchHandle]:
        """Start several attempts (members of one sweep) as one batch job: one handle per member.

        Only batch launchers bundle; the others raise ResourceError (not retryable).
        """

    def launch_array(self, requests: Sequence[LaunchRequest], scheduling: Scheduling | None = None,
                     throttle: int = 0) -> list[LaunchHandle]:
        """Start several attempts (members of one sweep) as one job array, a task each: one handle per member.

        Only batch launchers whose scheduler takes arrays do; the others raise ResourceError (not retryable).
        """

    def fetch_outputs(self, handle: LaunchHandle, relatives: list[str], local_dir: str) -> int:
        """Copy files of the attempt's work directory on its host into ``local_dir`` (before stage-out);
        the number of files copied. An attempt whose work directory is ``local_dir`` itself copies none."""

    def watch(self, handle: LaunchHandle, on_exit: ExitCallback) -> None:
        """Call ``on_exit`` once the attempt has ended; enforce its timeout until then."""

    def collect(self, handle: LaunchHandle) -> AttemptResult:
        """Read the result of an ended attempt from its work directory."""

    def reports(self, handle: LaunchHandle, offset: int) -> tuple[list[Report], int]:
        """``@broker`` reports printed since byte ``offset`` of the payload's stdout, and the new offset."""

    def cancel(self, handle: LaunchHandle) -> None:
        """Kill the attempt's whole process group (idempotent); ``on_exit`` then fires with CANCELLED.

        Unless the attempt ended by itself first: whichever of its end and the kill is recorded first (its
        verdict, created exclusively by one side) decides, and an attempt that ended first keeps its result.
        """

    def recover(self, node_id: int, attempt: int, workdir: str, job_id: str | None) -> Recovered:
        """Find out what became of an attempt started by a broker that has since died.

        "running" must not depend on how far the attempt has got since its spawn (the local and SSH
        launchers ask the launch lock, batch launchers the scheduler): "absent" starts it again.
        """

    def close(self) -> None:
        """Stop background threads; running payloads are left running (a restarted broker re-attaches)."""
