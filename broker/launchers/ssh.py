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

With ``resident`` (``[hosts] ssh_agent``) the agent's ``start`` hands each attempt to the account's resident
agent on the host instead of starting an elf, and the agent keeps the elf's files and duties: one process
per payload, and everything above reads the same files (see :mod:`broker.elf.agent`). Those starts go through
the endpoint's relay (:meth:`broker.launchers.remote.Endpoint.start`: one host agent kept running, so a
launch starts no process on the host but the payload), and so do the polls once it is open. The relay also
tells of every end its agents report, and of an agent gone: the poller then runs at once
(:meth:`~broker.launchers.tracking.Poller.hurry`), not at its next interval; the files still decide.
Attempts that push their results still run under an elf.

Handles name the host as ``login@host``; ``job_id`` is the elf's pid, or the payload's under the resident agent.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

from broker.description.model import Scheduling
from broker.elf import elf
from broker.errors import ResourceError, StateError
from broker.launchers import base
from broker.launchers.base import LaunchHandle, LaunchRequest, Recovered
from broker.launchers.remote import Endpoint
from broker.launchers.remote_launcher import RemoteLauncher, elf_args, payload_env, push_files, session_of
from broker.launchers.tracking import Tracked, Watchlist, killed_by_broker, timeout_message

log = logging.getLogger(__name__)

#: seconds an attempt may show neither a live elf nor a result before it counts as lost
LOST_AFTER = 30.0
#: seconds an adopted attempt's process is given to write its pid
ADOPT_PATIENCE = 5.0


class SshLauncher(RemoteLauncher):
    """Runs payloads on one SSH host as one account (implements :class:`broker.launchers.base.Launcher`)."""

    def __init__(self, endpoint: Endpoint, *, poll_interval: float = 2.0,
                 max_output_bytes: int = elf.DEFAULT_MAX_VALUE_BYTES, lost_after: float = LOST_AFTER,
                 stage_max_bytes: int = 10 * 1024**3, resident: bool = False):
        """``stage_max_bytes``: the largest file moved between the engine's and the host's work directories;
        ``resident``: payloads start under the account's resident agent on the host, not under an elf each."""
        super().__init__(endpoint, kind="ssh", poll_interval=poll_interval, max_output_bytes=max_output_bytes,
                         stage_max_bytes=stage_max_bytes)
        self._lost_after = lost_after
        self._resident = resident
        self._agent_warned = False
        #: until when (monotonic) this host's resident agent is not tried: it could not start there
        self._no_agent_until = 0.0
        # the relay tells of ends as they happen: the poll runs at once instead of at its interval
        endpoint.on_relay_event = lambda event: self.poller.hurry()

    # ------------------------------------------------------------------------------------ the interface

    def launch(self, request: LaunchRequest, scheduling: Scheduling | None = None) -> LaunchHandle:
        """Write the attempt's files and start its elf detached; one command over the pooled connection.

        ``scheduling``: ignored (a batch launcher's)."""
        ep = self.endpoint
        started_at = time.time()
        workdir = self._remote_workdir(request)
        record = {"node_id": request.node_id, "attempt": request.attempt, "started_at": started_at,
                  "timeout": request.timeout, "session": session_of(request)}
        resident = self._resident and time.monotonic() >= self._no_agent_until
        start = ep.start if resident else functools.partial(ep.agent, "start")
        reply = start({"workdir": workdir, "payload": request.payload_text, "files": push_files(request),
                       "env": payload_env(ep.host.env, request), "python": ep.host.python,
                       "elf": ep.elf_path, "args": elf_args(request, self._max_output_bytes),
                       "record": record, **({"resident": ep.resident} if resident else {})})
        if reply.get("error") == "exists":
            return self._adopt(request, workdir)
        if "agent_error" in reply:
            # not tried at each launch meanwhile: a Python start that fails each time costs every launch
            self._no_agent_until = time.monotonic() + base.AGENT_RETRY
            if not self._agent_warned:
                self._agent_warned = True  # once: every attempt there says the same
                log.warning("%s: attempts run under the elf: %s (the resident agent is tried again every %.0f "
                            "minutes)", ep.label, reply["agent_error"], base.AGENT_RETRY / 60)
        handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=workdir,
                              job_id=str(reply["pid"]), host=ep.label, started_at=started_at,
                              timeout=request.timeout)
        self._watch.add(handle, session_of(request))
        return handle

    def launch_bundle(self, requests: Sequence[LaunchRequest],
                      scheduling: Scheduling | None = None) -> list[LaunchHandle]:
        raise ResourceError(f"{self.endpoint.label}: only batch hosts run sweep members as one job (bundles)",
                            retryable=False)

    def launch_array(self, requests: Sequence[LaunchRequest], scheduling: Scheduling | None = None,
                     throttle: int = 0) -> list[LaunchHandle]:
        raise ResourceError(f"{self.endpoint.label}: only batch hosts run sweep members as job arrays",
                            retryable=False)

    def close(self) -> None:
        """Stop the poller and close the relay; payloads keep running (a new launcher recovers them)."""
        super().close()
        self.endpoint.close()

    def _adopt(self, request: LaunchRequest, workdir: str) -> LaunchHandle:
        """The attempt a previous launch of this very request started (its reply was lost): never a second one.

        Its process may not have written its pid yet (an elf starts in tens of milliseconds, more on a busy
        host): looked at again for a few seconds, so that the handle names it."""
        deadline = time.monotonic() + ADOPT_PATIENCE
        while time.monotonic() < deadline:
            item = self._first_look(request.node_id, request.attempt, workdir, "0")[1]
            if item.get("elf_pid") or item.get("pid") or not item.get("held"):
                break
            time.sleep(0.05)
        found = self.recover(request.node_id, request.attempt, workdir, None)
        tracked = self._watch.get(found.handle) if found.handle is not None else None
        if found.status == "running" and tracked is not None and tracked.session == session_of(request):
            log.info("%s: %s attempt %s was started before: adopted", self.endpoint.label, request.node_path,
                     request.attempt)
            return found.handle
        raise StateError(f"node {request.node_path} attempt {request.attempt}: work directory {workdir} on "
                         f"{self.endpoint.label} already holds a started attempt ({found.status})")

    def recover(self, node_id: int, attempt: int, workdir: str, job_id: str | None) -> Recovered:
        """Finished, running (adopted), absent (never started) or lost, from the work directory's files."""
        handle, item = self._first_look(node_id, attempt, workdir, job_id or "0")
        record = item.get("record")
        if not item.get("started") or record is None:
            return Recovered("absent")
        handle = dataclasses.replace(handle, job_id=str(item.get("elf_pid") or item.get("pid") or job_id or 0),
                                     started_at=record.get("started_at", 0.0), timeout=record.get("timeout"))
        tracked = Tracked(handle, record.get("session"))
        return self._recovered(tracked, self._judge(tracked, item, final_look=True))

    # ------------------------------------------------------------------------------------------ inside

    def _ended_now(self, tracked: Tracked) -> bool:
        return self._judge(tracked, self._probe([tracked], scan=False)[0], final_look=True)

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
        elif record.get("agent"):
            tracked.override = (base.LOST, "no result: the host's resident agent ended before the payload did "
                                           "(killed, or the host restarted), and its payloads with it")
        elif item.get("elf_pid") is None:
            tracked.override = (base.LOST, "the elf never started (see the host's python and the work directory)")
        else:
            tracked.override = (base.LOST, "no result: the elf died without recording one (host restarted?)")
        return True

    def _poll_ended(self, tracked: list[Tracked]) -> list[bool]:
        try:
            items = self._probe(tracked)
        except ResourceError as exc:
            log.warning("%s: cannot read the status of %d attempts: %s", self.endpoint.label, len(tracked), exc)
            return [False] * len(tracked)
        ended = []
        for t, item in zip(tracked, items):
            Watchlist.add_reports(t, item)
            ended.append(self._judge(t, item))
        return ended

__all__ = ["SshLauncher"]
