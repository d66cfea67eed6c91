"""The SSH launcher: payloads run on a remote host as the user's account, under the elf, detached.

``launch`` is one agent command over the pooled connection: it creates the work directory (0700, under the
account's private root), writes the payload, its environment and an exclusive launch record, and starts
``python3 elf.py run ...`` in a new session with no terminal and no inherited output, so the payload
outlives the SSH channel, the connection and the broker. From then on the elf's files in the work
directory are the truth: one poller thread per (host, account) reads the status files and new reports of
every running attempt in one command per interval. The elf enforces the node's timeout itself; ``cancel``
claims the attempt's verdict and SIGTERMs its elf, which kills the payload's process group and records the
outcome, unless the elf's own verdict (the payload ended) came first: then nothing is sent and the attempt
keeps its result (see :mod:`broker.launchers.hostagent` and the elf).

Whether an attempt runs is the launch record's lock, held by its elf from the spawn on (the agent's
``held``): no clock and no pid decide it. Attempts started before the lock go by the elf's pid as before.

Handles name the host as ``login@host``; ``job_id`` is the elf's pid.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from broker.elf import elf
from broker.errors import ResourceError, StateError
from broker.launchers import base
from broker.launchers import hostagent
from broker.launchers.base import AttemptResult, LaunchHandle, LaunchRequest, Recovered, Report
from broker.launchers.remote import Endpoint
from broker.launchers.tracking import (Poller, Tracked, Watchlist, fire, killed_by_broker, status_result,
                                      timeout_message)

log = logging.getLogger(__name__)

#: seconds an attempt may show neither a live elf nor a result before it counts as lost
LOST_AFTER = 30.0


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


class SshLauncher:
    """Runs payloads on one SSH host as one account (implements :class:`broker.launchers.base.Launcher`)."""

    def __init__(self, endpoint: Endpoint, *, poll_interval: float = 2.0,
                 max_output_bytes: int = elf.DEFAULT_MAX_VALUE_BYTES, lost_after: float = LOST_AFTER,
                 stage_max_bytes: int = 10 * 1024**3):
        """``stage_max_bytes``: the largest file moved between the engine's and the host's work directories."""
        self.endpoint = endpoint
        self._stage_max_bytes = stage_max_bytes
        self._max_output_bytes = max_output_bytes
        self._lost_after = lost_after
        self._watch = Watchlist()
        self.poller = Poller(f"ssh-poller-{endpoint.label}", poll_interval, self._poll,
                             lambda: bool(self._watch.active()))

    # ------------------------------------------------------------------------------------ the interface

    def launch(self, request: LaunchRequest) -> LaunchHandle:
        """Write the attempt's files and start its elf detached; one command over the pooled connection."""
        ep = self.endpoint
        workdir = ep.workdir(request.workdir)
        started_at = time.time()
        record = {"node_id": request.node_id, "attempt": request.attempt, "started_at": started_at,
                  "timeout": request.timeout, "session": session_of(request)}
        if workdir != request.workdir:
            ep.push_inputs(request.workdir, workdir, self._stage_max_bytes)
        reply = ep.agent("start", {"workdir": workdir, "payload": request.payload_text, "files": push_files(request),
                                   "env": payload_env(ep.host.env, request), "python": ep.host.python,
                                   "elf": ep.elf_path, "args": elf_args(request, self._max_output_bytes),
                                   "record": record})
        if reply.get("error") == "exists":
            return self._adopt(request, workdir)
        handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=workdir,
                              job_id=str(reply["pid"]), host=ep.label, started_at=started_at,
                              timeout=request.timeout)
        self._watch.add(handle, session_of(request))
        return handle

    def _adopt(self, request: LaunchRequest, workdir: str) -> LaunchHandle:
        """The attempt a previous launch of this very request started (its reply was lost): never a second one."""
        found = self.recover(request.node_id, request.attempt, workdir, None)
        tracked = self._watch.get(found.handle) if found.handle is not None else None
        if found.status == "running" and tracked is not None and tracked.session == session_of(request):
            log.info("%s: %s attempt %s was started before: adopted", self.endpoint.label, request.node_path,
                     request.attempt)
            return found.handle
        raise StateError(f"node {request.node_path} attempt {request.attempt}: work directory {workdir} on "
                         f"{self.endpoint.label} already holds a started attempt ({found.status})")

    def watch(self, handle: LaunchHandle, on_exit: base.ExitCallback) -> None:
        """Call ``on_exit`` from the poller thread once the attempt has ended (at once if it has)."""
        if self._watch.watch(handle, None, on_exit):
            on_exit(handle.node_id, handle.attempt)
        else:
            self.poller.wake()

    def reports(self, handle: LaunchHandle, offset: int) -> tuple[list[Report], int]:
        """Reports the poller read since ``offset`` (no remote call)."""
        found = self._watch.reports(handle, offset)
        return found if found is not None else ([], offset)

    def collect(self, handle: LaunchHandle) -> AttemptResult:
        """The result of an ended attempt (from the status the poller read, else read now); then forgotten."""
        tracked = self._watch.get(handle)
        if tracked is None or not tracked.ended:
            tracked = tracked or Tracked(handle, None)
            item = self._probe([tracked], scan=False)[0]
            if not self._judge(tracked, item, final_look=True):
                raise StateError(f"attempt {handle.attempt} of node {handle.node_id} is still running")
        self._watch.forget(handle)
        return status_result(handle, tracked.status, tracked.override)

    def cancel(self, handle: LaunchHandle) -> None:
        """Mark the attempt cancelled and SIGTERM its elf (idempotent; a no-op once it has ended)."""
        tracked = self._watch.get(handle)
        if tracked is not None:
            tracked.cancelled = True
            if tracked.ended:
                return
        self.endpoint.agent("cancel", {"items": [[self.endpoint.workdir(handle.workdir), elf.CANCELLED]],
                                       "elf": self.endpoint.elf_path})
        self.poller.wake()

    def recover(self, node_id: int, attempt: int, workdir: str, job_id: str | None) -> Recovered:
        """Finished, running (adopted), absent (never started) or lost, from the work directory's files."""
        remote = self.endpoint.workdir(workdir)
        handle = LaunchHandle(node_id=node_id, attempt=attempt, workdir=remote, job_id=job_id or "0",
                              host=self.endpoint.label)
        tracked = Tracked(handle, None)
        item = self._probe([tracked], scan=False)[0]
        record = item.get("record")
        if not item.get("started") or record is None:
            return Recovered("absent")
        handle = LaunchHandle(node_id=node_id, attempt=attempt, workdir=remote,
                              job_id=str(item.get("elf_pid") or job_id or 0), host=self.endpoint.label,
                              started_at=record.get("started_at", 0.0), timeout=record.get("timeout"))
        tracked.handle = handle
        if self._judge(tracked, item, final_look=True):
            result = status_result(handle, tracked.status, tracked.override)
            return Recovered("lost" if result.outcome == base.LOST else "finished", result=result)
        self._watch.add(handle, record.get("session"))
        return Recovered("running", handle=handle)

    def fetch_outputs(self, handle: LaunchHandle, relatives: list[str], local_dir: str) -> int:
        """Copy files of the attempt's remote work directory into ``local_dir`` (before stage-out)."""
        return self.endpoint.fetch_outputs(handle.workdir, relatives, local_dir, self._stage_max_bytes)

    def close(self) -> None:
        """Stop the poller; remote payloads keep running (a new launcher recovers them)."""
        self.poller.close()

    def __enter__(self) -> SshLauncher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ inside

    def _probe(self, tracked: list[Tracked], scan: bool = True) -> list[dict[str, Any]]:
        return self.endpoint.probe(tracked, self._max_output_bytes, scan)

    def _judge(self, tracked: Tracked, item: dict[str, Any], final_look: bool = False) -> bool:
        """Decide from one probe whether the attempt has ended; sets status/override. True when ended."""
        status = item.get("status")
        cancelled = killed_by_broker(tracked, item)
        if status and status.get("outcome"):
            tracked.status = status
            if status["outcome"] == base.CANCELLED and not cancelled:
                tracked.override = (base.LOST, "killed by a signal that did not come from the broker")
            return True
        record = item.get("record") or {}
        if record.get("lock"):
            # its elf holds the launch lock: started and alive, whatever it has written yet
            alive = bool(item.get("held"))
        else:
            # started before the launch lock: the elf's pid says it, once the elf has had time to write it
            young = time.time() - (record.get("started_at") or tracked.handle.started_at) < self._lost_after
            alive = bool(item.get("elf_alive")) or (item.get("elf_pid") is None and young)
        if alive:
            return False
        tracked.status = status
        if cancelled:
            tracked.override = (base.CANCELLED, "cancelled")
        elif item.get("verdict") == elf.TIMEOUT:
            tracked.override = (base.TIMEOUT, timeout_message(record.get("timeout") or tracked.handle.timeout))
        elif item.get("elf_pid") is None:
            tracked.override = (base.LOST, "the elf never started (see the host's python and the work directory)")
        else:
            tracked.override = (base.LOST, "no result: the elf died without recording one (host restarted?)")
        return True

    def _poll(self) -> None:
        tracked = self._watch.active()
        if not tracked:
            return
        try:
            items = self._probe(tracked)
        except ResourceError as exc:
            log.warning("%s: cannot read the status of %d attempts: %s", self.endpoint.label, len(tracked), exc)
            return
        for t, item in zip(tracked, items):
            Watchlist.add_reports(t, item)
            if self._judge(t, item):
                fire(self._watch.end(t, t.status, t.override), t.handle)


__all__ = ["SshLauncher", "elf_args", "payload_env", "session_of"]
