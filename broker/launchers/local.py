"""The local launcher: payloads run as processes of this host, watched by one thread through pidfds.

Each attempt runs under ``wb-run.sh`` (a few lines of POSIX sh), which leads a new session and process
group, redirects the payload's output into the work directory and records the payload's exit status there.
The broker keeps no state that the work directory does not also hold, so a payload outlives a broker that
is killed, and a restarted broker finds its result (:meth:`LocalLauncher.recover`). The elf's parsing runs
in the broker process: no Python starts per node.

The work directory's own files, and how a wrapper process is told from a reused pid, are in
:mod:`broker.launchers.workdir`. A root broker starts an attempt as its owner's account (uid, gid, groups,
umask 077, the account's clean environment) in a work directory that account owns: :mod:`broker.runas`.
Whether an attempt started and lives is its launch record's lock, held by its wrapper from the spawn on,
and whether it ended by itself or was killed is its verdict (the ``exit`` file, created exclusively by the
first side): neither depends on timing (:mod:`broker.launchers.workdir`; re-attaching to attempts of a
broker that died: :mod:`broker.launchers.adoption`).

One watcher thread serves every attempt: an epoll set holds a pidfd per wrapper process (readable the
moment it exits, whether or not it is our child) and an eventfd that wakes it; its timeout is the nearest
deadline (a node's timeout, or the end of a kill grace period).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

from broker.description.model import Scheduling
from broker.elf import elf
from broker.errors import ResourceError, StateError
from broker.launchers import base
from broker.launchers.adoption import Adoption, Attempt, find_wrapper, is_legacy
from broker.launchers.base import AttemptResult, LaunchHandle, LaunchRequest, Report
from broker.launchers.workdir import (LAUNCH_FILE, WRAPPER, claim, is_alive, lock_exclusive, read_exit,
                                      write_new)
from broker.runas import SOURCE, RunAs, exports, make_subdirs, make_workdir, popen, write_owned

log = logging.getLogger(__name__)

#: a payload's environment when it starts as another account, sourced by a shell running as that account
ENV_FILE = "env.sh"


class LocalLauncher(Adoption):
    """Runs payloads on this host (implements :class:`broker.launchers.base.Launcher`)."""

    #: an attempt tracked without a pidfd is looked for until found (its wrapper); not under an agent
    _identify_unfound = True

    def __init__(self, *, max_output_bytes: int = elf.DEFAULT_MAX_VALUE_BYTES,
                 kill_grace: float = elf.KILL_GRACE):
        """``max_output_bytes``: the largest output value accepted; ``kill_grace``: seconds from SIGTERM to SIGKILL."""
        self._max_output_bytes = max_output_bytes
        self._kill_grace = kill_grace
        # The broker's own settings never reach a payload; nor do WB_* names it may have inherited. Kept as
        # bytes: Popen encodes every str key and value of the environment on each launch, which was a
        # tenth of a launch's CPU time with a typical environment of a few dozen variables.
        self._base_env = {k: v for k, v in os.environb.items()
                          if not (k.startswith(b"BROKER_") or k.startswith(b"WB_"))}
        #: (account or None, host variables) -> the environment payloads start from, encoded once
        self._envs: dict[tuple[RunAs | None, tuple[tuple[str, str], ...]], dict[bytes, bytes]] = {}
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._attempts: dict[tuple[int, int], Attempt] = {}
        self._by_fd: dict[int, Attempt] = {}
        #: (monotonic deadline, sequence, key, "timeout" or "kill")
        self._timers: list[tuple[float, int, tuple[int, int], str]] = []
        self._sequence = itertools.count()
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)
        self._closing = False
        self._thread = threading.Thread(target=self._watch_loop, name="local-launcher-watcher")
        self._thread.start()

    # ------------------------------------------------------------------------------------ the interface

    def launch(self, request: LaunchRequest, scheduling: Scheduling | None = None, *, run_as: RunAs | None = None,
               host_env: tuple[tuple[str, str], ...] = ()) -> LaunchHandle:
        """Create the work directory, write the payload, start it under the wrapper; return at once.

        ``scheduling``: ignored (a batch launcher's). ``run_as``: the account it starts as (the broker being root), in that account's clean environment;
        None: as the broker, in the broker's environment. ``host_env``: the host's variables, before the node's.
        """
        started_at = time.time()
        workdir = request.workdir
        make_workdir(workdir, run_as)
        record = {"node_id": request.node_id, "attempt": request.attempt, "started_at": started_at,
                  "timeout": request.timeout, "lock": 1}
        try:
            write_new(os.path.join(workdir, LAUNCH_FILE), json.dumps(record).encode(), exclusive=True)
        except FileExistsError:
            raise StateError(f"node {request.node_path} attempt {request.attempt}: work directory {workdir} "
                             "already holds a started attempt") from None
        payload_path = os.path.join(workdir, elf.PAYLOAD_FILE)
        write_owned(payload_path, request.payload_text.encode("utf-8"), run_as)
        cwd = workdir
        if request.cwd:
            cwd = os.path.join(workdir, request.cwd)
            if not os.path.isabs(request.cwd):
                cwd = make_subdirs(workdir, request.cwd, run_as)
        interpreter = request.interpreter or elf.DEFAULT_INTERPRETERS[request.payload_type]
        env = self._environment(run_as, host_env).copy()
        env.update((os.fsencode(k), os.fsencode(v)) for k, v in request.env)
        env[b"WB_WORKDIR"] = os.fsencode(workdir)
        return self._spawn(request, run_as, started_at, [interpreter, payload_path], env, cwd)

    def _spawn(self, request: LaunchRequest, run_as: RunAs | None, started_at: float, argv: list[str],
               env: dict[bytes, bytes], cwd: str) -> LaunchHandle:
        """Start ``argv`` (the interpreter and the payload) under the wrapper; the agent launcher overrides it."""
        workdir = request.workdir
        argv = ["/bin/sh", WRAPPER, workdir, *argv]
        # locked before the spawn and handed to the wrapper as its stdin: see broker.launchers.workdir
        lock = lock_exclusive(os.path.join(workdir, LAUNCH_FILE))
        try:
            if run_as is None:
                proc = subprocess.Popen(argv, env=env, stdin=lock, stdout=self._devnull,
                                        stderr=self._devnull, cwd=cwd, start_new_session=True, close_fds=True)
            else:
                # the environment, which the user chose, is read by a shell already running as the account
                env_file = os.path.join(workdir, ENV_FILE)
                write_owned(env_file, exports(env), run_as)
                proc = popen(run_as, ["/bin/sh", "-c", SOURCE, env_file, *argv], stdin=lock,
                             stdout=self._devnull, stderr=self._devnull, cwd=cwd, start_new_session=True,
                             close_fds=True)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise ResourceError(f"node {request.node_path} attempt {request.attempt}: cannot start in "
                                f"{cwd}: {exc.strerror}", retryable=False) from None
        except OSError as exc:
            raise ResourceError(f"node {request.node_path} attempt {request.attempt}: cannot start the "
                                f"payload: {exc.strerror or exc}") from None
        finally:
            os.close(lock)
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError as exc:  # EMFILE: each running attempt holds one descriptor
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise ResourceError(f"node {request.node_path} attempt {request.attempt}: cannot watch the "
                                f"payload: {exc.strerror}") from None
        handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=workdir,
                              job_id=str(proc.pid), started_at=started_at, timeout=request.timeout)
        self._track(handle, pidfd, proc)
        return handle

    def watch(self, handle: LaunchHandle, on_exit: base.ExitCallback) -> None:
        """Call ``on_exit(node_id, attempt)`` from the watcher thread when the attempt ends (at once if it has)."""
        with self._lock:
            attempt = self._attempts.get((handle.node_id, handle.attempt))
            if attempt is not None and not attempt.ended:
                if on_exit not in attempt.callbacks:
                    attempt.callbacks.append(on_exit)
                return
        if attempt is None and self._adopt(handle, on_exit) is not None:
            return
        on_exit(handle.node_id, handle.attempt)

    def cancel(self, handle: LaunchHandle) -> None:
        """Record the kill verdict, SIGTERM the process group, SIGKILL after the grace; a no-op once it has ended.

        Nothing is sent if the wrapper recorded the payload's exit status first: the attempt keeps its result.
        """
        with self._lock:
            attempt = self._attempts.get((handle.node_id, handle.attempt))
        if attempt is None:
            attempt = self._adopt(handle, None)
            if attempt is None:
                return
        self._kill(attempt, elf.CANCELLED)

    def reports(self, handle: LaunchHandle, offset: int) -> tuple[list[Report], int]:
        """Reports printed since byte ``offset`` of the payload's stdout (complete lines only)."""
        found = elf.scan(os.path.join(handle.workdir, elf.STDOUT_FILE), offset, self._max_output_bytes,
                          budget=elf.SCAN_BUDGET)
        with self._lock:
            attempt = self._attempts.get((handle.node_id, handle.attempt))
            if attempt is not None and attempt.scan_offset == offset:
                self._fold(attempt, found)
        return [Report(*r) for r in found.reports], found.offset

    def collect(self, handle: LaunchHandle) -> AttemptResult:
        """The result of an ended attempt, from its work directory; the launcher then forgets it."""
        key = (handle.node_id, handle.attempt)
        with self._lock:
            attempt = self._attempts.get(key)
            if attempt is not None and not attempt.ended:
                raise StateError(f"attempt {handle.attempt} of node {handle.node_id} is still running")
            self._attempts.pop(key, None)
        if attempt is None:
            attempt = Attempt(handle, -1, None, ended=True, legacy=is_legacy(handle.workdir))
            found = find_wrapper(handle.workdir, handle.job_id) if attempt.legacy else None
            if found is not None:
                os.close(found[1])
            if found is not None or not attempt.legacy and is_alive(handle.workdir):
                raise StateError(f"attempt {handle.attempt} of node {handle.node_id} is still running")
        return self._result(attempt)

    def launch_bundle(self, requests: Sequence[LaunchRequest],
                      scheduling: Scheduling | None = None) -> list[LaunchHandle]:
        raise ResourceError("only batch hosts run sweep members as one job (bundles)", retryable=False)

    def launch_array(self, requests: Sequence[LaunchRequest], scheduling: Scheduling | None = None,
                     throttle: int = 0) -> list[LaunchHandle]:
        raise ResourceError("only batch hosts run sweep members as job arrays", retryable=False)

    def fetch_outputs(self, handle: LaunchHandle, relatives: list[str], local_dir: str) -> int:
        """Nothing to copy: the attempt's work directory is on this machine already."""
        return 0

    def close(self) -> None:
        """Stop and join the watcher thread; running payloads keep running."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join()
        for attempt in self._by_fd.values():
            os.close(attempt.pidfd)
        self._by_fd.clear()
        self._epoll.close()
        os.close(self._wake_fd)
        os.close(self._devnull)

    def __enter__(self) -> LocalLauncher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ inside

    def _environment(self, run_as: RunAs | None, host_env: tuple[tuple[str, str], ...]) -> dict[bytes, bytes]:
        """The broker's environment (as itself) or the account's clean one (switched), then the host's."""
        key = (run_as, host_env)
        env = self._envs.get(key)
        if env is None:
            env = self._base_env.copy() if run_as is None else run_as.environment()
            env.update((os.fsencode(k), os.fsencode(v)) for k, v in host_env)
            self._envs[key] = env
        return env

    def _track(self, handle: LaunchHandle, pidfd: int, proc: subprocess.Popen | None,
               on_exit: base.ExitCallback | None = None, legacy: bool = False) -> Attempt:
        """Watch an attempt: through its pidfd, or (-1) through its lock until its wrapper is identified."""
        attempt = Attempt(handle, pidfd, proc, legacy=legacy)
        if on_exit is not None:
            attempt.callbacks.append(on_exit)
        with self._lock:
            self._attempts[(handle.node_id, handle.attempt)] = attempt
            if pidfd >= 0:
                self._by_fd[pidfd] = attempt
                self._epoll.register(pidfd, select.EPOLLIN)
            elif self._identify_unfound:
                self._add_timer(time.monotonic() + attempt.retry, attempt, "identify")
            if handle.timeout:
                # A node's timeout counts from its start, also for an attempt adopted after a restart.
                delay = handle.started_at + handle.timeout - time.time()
                self._add_timer(time.monotonic() + delay, attempt, "timeout")
        return attempt

    def _add_timer(self, when: float, attempt: Attempt, kind: str) -> None:
        """Queue a deadline (lock held); wake the watcher if it is now the nearest."""
        key = (attempt.handle.node_id, attempt.handle.attempt)
        nearest = self._timers[0][0] if self._timers else None
        heapq.heappush(self._timers, (when, next(self._sequence), key, kind))
        if nearest is None or when < nearest:
            os.eventfd_write(self._wake_fd, 1)

    def _kill(self, attempt: Attempt, reason: str) -> None:
        """Record the verdict ``reason`` unless the attempt has one; if it is ours, kill (see :meth:`cancel`)."""
        with self._lock:
            if attempt.ended or attempt.reason is not None:
                return
            try:
                if not claim(attempt.handle.workdir, reason):
                    # the payload's exit status came first (it keeps it), or an earlier kill did (finish it)
                    reason = read_exit(attempt.handle.workdir)[1]
                    if reason is None:
                        return
            except OSError as exc:
                # kill all the same: the verdict lives in memory only, until this broker stops
                log.warning("cannot record the kill of %s: %s", attempt.handle.workdir, exc)
            attempt.reason = reason
            self._strike(attempt)

    def _strike(self, attempt: Attempt) -> None:
        """SIGTERM the group now and SIGKILL it after the grace (lock held); once identified if it is not yet."""
        if attempt.pid > 1:
            self._signal(attempt, signal.SIGTERM)
            self._add_timer(time.monotonic() + self._kill_grace, attempt, "kill")

    def _signal(self, attempt: Attempt, signum: int) -> None:
        """Send ``signum`` to the attempt's process group (the agent launcher asks its agent instead)."""
        _killpg(attempt.pid, signum)

    def _sigkill(self, attempt: Attempt) -> None:
        self._signal(attempt, signal.SIGKILL)

    def _watch_loop(self) -> None:
        while not self._closing:
            try:
                self._watch_once()
            except Exception:  # the one watcher of every attempt must outlive any bug in one of them
                log.exception("local launcher watcher")

    def _watch_once(self) -> None:
        with self._lock:
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else -1
        events = self._epoll.poll(timeout)
        fired: list[tuple[base.ExitCallback, int, int]] = []
        due: list[tuple[Attempt, str]] = []
        with self._lock:
            if self._closing:
                return
            for fd, _ in events:
                if fd == self._wake_fd:
                    os.eventfd_read(fd)
                elif fd in self._by_fd:
                    fired.extend(self._ended(self._by_fd.pop(fd)))
                else:
                    fired.extend(self._other_fd(fd))
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, key, kind = heapq.heappop(self._timers)
                attempt = self._attempts.get(key)
                if attempt is not None and not attempt.ended:
                    due.append((attempt, kind))
        fired.extend(self._after_events())
        for attempt, kind in due:
            if kind == "timeout":
                self._kill(attempt, elf.TIMEOUT)
            elif kind == "kill":
                self._sigkill(attempt)
            else:
                fired.extend(self._identify(attempt))
        for callback, node_id, number in fired:
            try:
                callback(node_id, number)
            except Exception:  # a failing callback must not stop the watcher of every other attempt
                log.exception("exit callback of node %s attempt %s failed", node_id, number)

    def _ended(self, attempt: Attempt) -> list[tuple[base.ExitCallback, int, int]]:
        """The wrapper exited (lock held): clean up, reap, and return the callbacks to run."""
        if attempt.pidfd >= 0:
            self._epoll.unregister(attempt.pidfd)
            os.close(attempt.pidfd)
        if attempt.reason is not None:
            # Killed: what remains of its group goes too. Sent before reaping, while the group id is taken.
            self._sigkill(attempt)
        if attempt.proc is not None:
            attempt.proc.poll()
        attempt.ended = True
        if len(self._timers) > 1024 and len(self._timers) > 4 * len(self._by_fd):
            # Deadlines of ended attempts linger until due (a day, say): drop them now and then.
            self._timers = [t for t in self._timers if not getattr(self._attempts.get(t[2]), "ended", True)]
            heapq.heapify(self._timers)
        node_id, number = attempt.handle.node_id, attempt.handle.attempt
        return [(callback, node_id, number) for callback in attempt.callbacks]

    def _other_fd(self, fd: int) -> list[tuple[base.ExitCallback, int, int]]:
        """An epoll event on a descriptor of a subclass (lock held); callbacks to run."""
        return []

    def _after_events(self) -> list[tuple[base.ExitCallback, int, int]]:
        """Work a subclass left for after the events, without the lock; callbacks to run."""
        return []


def _killpg(pgid: int, signum: int) -> None:
    if pgid <= 1:
        return  # not identified yet: 0 would be the broker's own group
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
