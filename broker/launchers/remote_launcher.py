"""What the SSH and batch launchers share: one endpoint, the attempts it watches, one poller thread.

A :class:`RemoteLauncher` keeps a :class:`~broker.launchers.tracking.Watchlist` of the attempts it started or
recovered; its poller thread asks the subclass which of them have ended (:meth:`RemoteLauncher._poll_ended`)
and fires their ``on_exit``. ``collect``, ``reports``, the start of ``cancel`` and ``recover``,
``fetch_outputs`` and ``close`` are the same for every remote launcher; how an attempt is started and judged
ended is each subclass's.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Self

from broker.elf import elf
from broker.errors import StateError
from broker.launchers import base, hostagent
from broker.launchers.base import AttemptResult, LaunchHandle, LaunchRequest, Recovered, Report
from broker.launchers.remote import Endpoint
from broker.launchers.tracking import Poller, Tracked, Watchlist, fire, status_result


def payload_env(host_env: tuple[tuple[str, str], ...], request: LaunchRequest) -> list[tuple[str, str]]:
    """The payload's variables: the host's, then the request's (which win)."""
    merged = dict(host_env)
    merged.update(request.env)
    return list(merged.items())


def elf_args(request: LaunchRequest, max_output_bytes: int) -> dict[str, Any]:
    """The elf's ``run`` options for one request (see hostagent.elf_argv)."""
    return {"type": request.payload_type, "attempt": request.attempt, "session": session_of(request),
            "max_value_bytes": max_output_bytes, "timeout": request.timeout, "interpreter": request.interpreter,
            "cwd": request.cwd, "push": request.push is not None}


def push_files(request: LaunchRequest) -> dict[str, str]:
    """The push target file of an attempt whose elf pushes (written 0600 by the agent; the elf removes it)."""
    if request.push is None:
        return {}
    url, session_id, secret = request.push
    return {hostagent.PUSH_FILE: json.dumps({"url": url, "session": session_id, "secret": secret})}


def session_of(request: LaunchRequest) -> str:
    """The elf session of a request: the node's global id."""
    return f"{request.workflow_global_id}/{request.node_path}"


class RemoteLauncher:
    """The part of :class:`broker.launchers.base.Launcher` every launcher of a remote (host, account) shares."""

    #: extra options of the agent's ``cancel`` (the batch launcher's elfs are stopped by their job, not a signal)
    CANCEL_OPTIONS: dict[str, Any] = {}

    def __init__(self, endpoint: Endpoint, *, kind: str, poll_interval: float, max_output_bytes: int,
                 stage_max_bytes: int):
        """``kind``: names the poller thread; ``poll_interval``: seconds; ``stage_max_bytes``: the largest file
        moved between the engine's and the host's work directories."""
        self.endpoint = endpoint
        self._max_output_bytes = max_output_bytes
        self._stage_max_bytes = stage_max_bytes
        self._watch = Watchlist()
        #: commands run, by kind ("submit", "query", "history", "probe", "cancel"): for tests and metrics
        self.calls: collections.Counter[str] = collections.Counter()
        self.poller = Poller(f"{kind}-poller-{endpoint.label}", poll_interval, self._poll,
                             lambda: bool(self._watch.active()))

    # ---------------------------------------------------------------------------- what subclasses add

    def _poll_ended(self, tracked: list[Tracked]) -> list[bool]:
        """From the poller thread: look at the attempts (and record their new reports); True per ended one."""
        raise NotImplementedError

    def _ended_now(self, tracked: Tracked) -> bool:
        """Look at one attempt for its result now (a last look: no report scan); True once it has ended."""
        raise NotImplementedError

    def _cancelled(self, handle: LaunchHandle, tracked: Tracked | None, reply: dict[str, Any]) -> None:
        """After the agent's cancel (``reply``): whatever else stops the attempt."""
        self.poller.wake()

    def _watching(self, handle: LaunchHandle) -> None:
        """An attempt of an earlier broker is watched from now on (:meth:`watch`)."""

    def _watch_from_now(self, tracked: Tracked) -> None:
        """Watch a recovered attempt that still runs."""
        self._watch.add(tracked.handle, tracked.session)

    # ------------------------------------------------------------------------------------ the interface

    def _remote_workdir(self, request: LaunchRequest) -> str:
        """The attempt's work directory on the host, with the engine's inputs copied there if it is another."""
        workdir = self.endpoint.workdir(request.workdir)
        if workdir != request.workdir:
            self.endpoint.push_inputs(request.workdir, workdir, self._stage_max_bytes)
        return workdir

    def watch(self, handle: LaunchHandle, on_exit: base.ExitCallback) -> None:
        """Call ``on_exit`` from the poller thread once the attempt has ended (at once if it has)."""
        if self._watch.watch(handle, None, on_exit):
            on_exit(handle.node_id, handle.attempt)
            return
        self._watching(handle)
        self.poller.wake()

    def reports(self, handle: LaunchHandle, offset: int) -> tuple[list[Report], int]:
        """Reports the poller read since ``offset`` (no remote call)."""
        found = self._watch.reports(handle, offset)
        return found if found is not None else ([], offset)

    def collect(self, handle: LaunchHandle) -> AttemptResult:
        """The result of an ended attempt (from what the poller read, else read now); then forgotten."""
        tracked = self._watch.get(handle)
        if tracked is None or not tracked.ended:
            tracked = tracked or Tracked(handle, None)
            if not self._ended_now(tracked):
                raise StateError(f"attempt {handle.attempt} of node {handle.node_id} is still running")
        self._watch.forget(handle)
        return status_result(handle, tracked.status, tracked.override)

    def cancel(self, handle: LaunchHandle) -> None:
        """Mark the attempt cancelled and claim its verdict through the agent (idempotent; a no-op once it
        has ended)."""
        tracked = self._watch.get(handle)
        if tracked is not None:
            tracked.cancelled = True
            if tracked.ended:
                return
        self.calls["cancel"] += 1
        reply = self.endpoint.agent("cancel", {"items": [[self.endpoint.workdir(handle.workdir), elf.CANCELLED]],
                                               **self.CANCEL_OPTIONS, "elf": self.endpoint.elf_path})
        self._cancelled(handle, tracked, reply)

    def _first_look(self, node_id: int, attempt: int, workdir: str, job_id: str) -> tuple[LaunchHandle, dict]:
        """For ``recover``: a handle of the attempt on the host and one probe of its work directory."""
        handle = LaunchHandle(node_id=node_id, attempt=attempt, workdir=self.endpoint.workdir(workdir),
                              job_id=job_id, host=self.endpoint.label)
        return handle, self._probe([Tracked(handle, None)], scan=False)[0]

    def _recovered(self, tracked: Tracked, ended: bool) -> Recovered:
        """For ``recover``: the result of an attempt that has ended, else the attempt watched from now on."""
        if ended:
            result = status_result(tracked.handle, tracked.status, tracked.override)
            return Recovered("lost" if result.outcome == base.LOST else "finished", result=result)
        self._watch_from_now(tracked)
        return Recovered("running", handle=tracked.handle)

    def fetch_outputs(self, handle: LaunchHandle, relatives: list[str], local_dir: str) -> int:
        """Copy files of the attempt's work directory on the host into ``local_dir`` (before stage-out)."""
        return self.endpoint.fetch_outputs(handle.workdir, relatives, local_dir, self._stage_max_bytes)

    def close(self) -> None:
        """Stop the poller; payloads and jobs keep running (a new launcher recovers them)."""
        self.poller.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ inside

    def _probe(self, tracked: list[Tracked], scan: bool = True) -> list[dict[str, Any]]:
        self.calls["probe"] += 1
        return self.endpoint.probe(tracked, self._max_output_bytes, scan)

    def _poll(self) -> None:
        tracked = self._watch.active()
        if tracked:
            for t, ended in zip(tracked, self._poll_ended(tracked)):
                if ended:
                    fire(self._watch.end(t, t.status, t.override), t.handle)


__all__ = ["RemoteLauncher", "elf_args", "payload_env", "push_files", "session_of"]
