"""How the local launcher re-attaches to attempts it did not start (a broker that died left them running).

"Is it still running?" is answered by the launch record's lock (see :mod:`broker.launchers.workdir`), so
it does not depend on how far the wrapper has got. Watching an adopted attempt needs its wrapper's pid
(for a pidfd, and for the process group to signal): it comes from the pid file, the broker's record, or
/proc. A wrapper that holds the lock but cannot be found yet (stopped, or slow, between the fork and its
first instruction) is looked for again at growing intervals, and ends when its lock is released; a kill
decided meanwhile is recorded at once and sent as soon as it is found (the wrapper also never starts its
payload once a kill verdict is there).

Attempts started by a broker from before the launch lock are recognised by their launch record and found
the old way, by their pid or in /proc.

:class:`Adoption` is the part of :class:`broker.launchers.local.LocalLauncher` that does this; it uses the
launcher's tracking (``_track``, ``_ended``, ``_strike``, ``_add_timer``) and lock. :class:`Attempt` is what
the launcher tracks of each attempt, started or adopted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import subprocess
import time
from typing import Any

from broker.elf import elf
from broker.launchers import base
from broker.launchers.base import AttemptResult, LaunchHandle, Recovered
from broker.launchers.workdir import (LAUNCH_FILE, candidate_pids, is_alive, lock_if_free, open_if_wrapper,
                                      read_exit, read_launch, read_pid)

#: seconds between two looks for the pid of an adopted wrapper that has not written it yet (doubling)
IDENTIFY_FIRST = 0.01
IDENTIFY_MAX = 1.0


class Attempt:
    """What the local launcher tracks about one started or adopted attempt (guarded by the launcher's lock)."""

    __slots__ = ("handle", "pid", "proc", "pidfd", "callbacks", "ended", "reason", "scan_offset", "outputs",
                 "budget", "progress", "ignored", "legacy", "retry", "spawn")

    def __init__(self, handle: LaunchHandle, pidfd: int, proc: subprocess.Popen | None, ended: bool = False,
                 legacy: bool = False):
        self.handle = handle
        #: the wrapper's pid, which is its process group's id; 0 while an adopted wrapper is not identified
        self.pid = int(handle.job_id)
        #: our own child (None when adopted from a previous broker): reaped by the watcher
        self.proc = proc
        #: -1 while not identified
        self.pidfd = pidfd
        self.callbacks: list[base.ExitCallback] = []
        self.ended = ended
        #: why the launcher killed it (elf.TIMEOUT or elf.CANCELLED; its verdict file says so too), None if not
        self.reason: str | None = None
        #: started by a broker from before the launch lock and the verdict file
        self.legacy = legacy
        #: seconds until the next look for an unidentified wrapper's pid
        self.retry = IDENTIFY_FIRST
        # reports already read from stdout, so collect() does not read them again
        self.scan_offset = 0
        self.outputs: dict = {}
        #: what ``outputs`` holds, measured: None until the first report is read
        self.budget: elf.OutputBudget | None = None
        self.progress: tuple[float, str | None] | None = None
        self.ignored = 0
        #: the file of the last ``@broker spawn`` report read
        self.spawn: str | None = None


class Adoption:
    """Recovery and adoption, mixed into the local launcher (whose attributes and methods below it uses)."""

    _lock: Any
    _closing: bool
    _attempts: dict[tuple[int, int], Attempt]
    _by_fd: dict[int, Attempt]
    _epoll: Any
    _track: Any
    _strike: Any
    _ended: Any
    _add_timer: Any
    _max_output_bytes: int

    def recover(self, node_id: int, attempt: int, workdir: str, job_id: str | None) -> Recovered:
        """Finished (a verdict recorded), running (adopted: watch it), absent (never started), or lost.

        Running is what the launch record's lock says, whatever the wrapper has written yet; once the lock
        is free the files are final, and an attempt without a pid never ran its payload.
        """
        with self._lock:
            known = self._attempts.get((node_id, attempt))
        if known is not None and not known.ended:
            return Recovered("running", handle=known.handle)
        launch = read_launch(workdir)
        handle = LaunchHandle(node_id=node_id, attempt=attempt, workdir=workdir, job_id=job_id or "0",
                              started_at=launch.get("started_at", 0.0), timeout=launch.get("timeout"))
        legacy = bool(launch) and not launch.get("lock")
        if legacy:
            adopted = self._adopt_live(handle, None, legacy) if read_exit(workdir)[0] is None else None
            if adopted is not None:
                return Recovered("running", handle=adopted.handle)
            never_ran = read_pid(workdir) is None
        else:
            try:
                free = lock_if_free(workdir)
            except FileNotFoundError:
                return Recovered("absent")  # no launch record: the broker died before it started anything
            if free is None:
                return Recovered("running", handle=self._adopt_live(handle, None, legacy).handle)
            try:
                never_ran = read_exit(workdir) == (None, None) and read_pid(workdir) is None
            finally:
                os.close(free)
        if never_ran:
            # The wrapper writes its pid before anything else: without one, nothing of this attempt ever ran
            # (the broker died between committing the launch intent and starting it). Clear the launch record
            # so the same attempt can be started now.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(workdir, LAUNCH_FILE))
            return Recovered("absent")
        # Nothing of it runs: its files say how it ended, and who ran it (the wrapper's pid, for the node's row)
        result = self._result_from_files(handle, legacy)
        handle = dataclasses.replace(handle, job_id=str(read_pid(workdir) or handle.job_id))
        return Recovered("lost" if result.outcome == base.LOST else "finished", result=result, handle=handle)

    def _adopt(self, handle: LaunchHandle, on_exit: base.ExitCallback | None) -> Attempt | None:
        """Track an attempt this launcher did not start, if it still runs."""
        legacy = is_legacy(handle.workdir)
        return self._adopt_live(handle, on_exit, legacy) if legacy or is_alive(handle.workdir) else None

    def _adopt_live(self, handle: LaunchHandle, on_exit: base.ExitCallback | None, legacy: bool
                    ) -> Attempt | None:
        """Track an attempt whose lock is held: by its wrapper's pidfd if found now, else until it is found.

        ``legacy`` (no lock to ask): only if its wrapper is found, else None.
        """
        found = find_wrapper(handle.workdir, handle.job_id)
        if found is None and legacy:
            return None
        pid, pidfd = found or (0, -1)
        attempt = self._track(dataclasses.replace(handle, job_id=str(pid)), pidfd, None, on_exit, legacy)
        reason = None if legacy else read_exit(handle.workdir)[1]
        if reason is not None:
            # a kill the previous broker decided and may not have finished: finish it
            with self._lock:
                attempt.reason = reason
                self._strike(attempt)
        return attempt

    def _identify(self, attempt: Attempt) -> list[tuple[base.ExitCallback, int, int]]:
        """Look again for an adopted wrapper's pid: watch its pidfd once found, end it once its lock is free."""
        found = find_wrapper(attempt.handle.workdir, None)
        alive = found is not None or is_alive(attempt.handle.workdir)
        with self._lock:
            if attempt.ended or self._closing:
                if found is not None:
                    os.close(found[1])
                return []
            if found is not None:
                attempt.pid, attempt.pidfd = found
                attempt.handle = dataclasses.replace(attempt.handle, job_id=str(found[0]))
                self._by_fd[attempt.pidfd] = attempt
                self._epoll.register(attempt.pidfd, select.EPOLLIN)
                if attempt.reason is not None:
                    self._strike(attempt)  # killed while it could not be signalled
                return []
            if not alive:
                return self._ended(attempt)  # its lock is free: its files are final
            attempt.retry = min(2 * attempt.retry, IDENTIFY_MAX)
            self._add_timer(time.monotonic() + attempt.retry, attempt, "identify")
            return []


    # ------------------------------------------------------------------ results, from the files

    def _result_from_files(self, handle: LaunchHandle, legacy: bool) -> AttemptResult:
        return self._result(Attempt(handle, -1, None, ended=True, legacy=legacy))

    def _fold(self, attempt: Attempt, found: elf.Scan) -> None:
        if attempt.budget is None:
            attempt.budget = elf.OutputBudget(elf.outputs_limit(self._max_output_bytes))
        attempt.progress = elf.fold(found.reports, attempt.outputs, attempt.progress, attempt.budget)
        attempt.spawn = elf.last_spawn(found.reports, attempt.spawn)
        attempt.ignored += found.ignored
        attempt.scan_offset = found.offset

    def _result(self, attempt: Attempt) -> AttemptResult:
        handle = attempt.handle
        found = elf.scan(os.path.join(handle.workdir, elf.STDOUT_FILE), attempt.scan_offset,
                         self._max_output_bytes, final=True)
        self._fold(attempt, found)
        exit_code, reason = read_exit(handle.workdir, legacy=attempt.legacy)
        reason = reason or attempt.reason
        if reason == elf.TIMEOUT:
            timeout = handle.timeout if handle.timeout is not None else read_launch(handle.workdir).get("timeout")
            outcome, message = base.TIMEOUT, f"killed after the timeout of {elf.format_seconds(timeout or 0)} s"
        elif reason == elf.CANCELLED:
            outcome, message = base.CANCELLED, "cancelled"
        elif exit_code is not None:
            outcome = base.SUCCEEDED if exit_code == 0 else base.FAILED
            message = elf.exit_message(exit_code)
            if exit_code == 127:
                message += " (command not found: is the interpreter installed?)"
        else:
            outcome, message = base.LOST, "no exit status: the process disappeared"
            if attempt.proc is not None and attempt.proc.returncode is not None and attempt.proc.returncode < 0:
                message += f" (its wrapper was killed by signal {-attempt.proc.returncode})"
        # read as the elf reads it on remote hosts: no symlink followed, size-capped
        spawned = elf.spawn_status(handle.workdir, attempt.spawn) if outcome == base.SUCCEEDED else None
        return AttemptResult(node_id=handle.node_id, attempt=handle.attempt, outcome=outcome,
                             exit_code=exit_code, outputs=dict(attempt.outputs), progress=attempt.progress,
                             message=message + elf.ignored_note(attempt.ignored), spawn=base.spawned(spawned))

def is_legacy(workdir: str) -> bool:
    """Whether the attempt was started by a broker from before the launch lock (its record says nothing of it)."""
    record = read_launch(workdir)
    return bool(record) and not record.get("lock")


def find_wrapper(workdir: str, job_id: str | None) -> tuple[int, int] | None:
    """(pid, pidfd) of the wrapper of ``workdir`` (its pid file, ``job_id``, /proc), if it runs."""
    for pid in candidate_pids(workdir, None if job_id == "0" else job_id):
        pidfd = open_if_wrapper(pid, workdir)
        if pidfd is not None:
            return pid, pidfd
    return None
