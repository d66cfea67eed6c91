"""The files of a local attempt's work directory, and the two facts they carry without depending on timing.

Besides the elf's files (``payload``, ``stdout``, ``stderr``, ``pid``):

``launch.json``
    the launch record (start time, timeout), created exclusively by the launcher, which then takes an
    exclusive ``flock`` on it *before* it spawns the wrapper and hands that locked descriptor to the
    wrapper as its standard input (the payload gets /dev/null instead). The lock is therefore held from
    the fork on, by whatever process the attempt is at that moment (the forked child before its exec, the
    wrapper after it), and is released by the kernel when the last holder ends, however it ends. **A
    held lock means "started and alive"; a free lock means "never started or dead"**, and which of the
    two is decided by the files the wrapper writes while it holds the lock (``pid`` first, ``exit`` last).
    No pid, no clock and no /proc reading is needed to answer "is it running?", so the answer cannot race
    with a wrapper that is slow to start.
``exit``
    the attempt's **verdict**, created exclusively (``O_EXCL``) by whichever side comes first: the
    wrapper, with the payload's exit status once the payload has ended by itself, or the launcher, with
    ``cancelled`` or ``timeout`` *before* it sends any signal. The loser does nothing more: a launcher
    that finds an exit status there does not kill (the attempt keeps its real result), and a wrapper
    that finds a kill verdict writes the payload's status into ``killed_exit`` instead. The launcher's
    verdict is written to a temporary file and hard-linked into place, so it appears with its text.
``killed_exit``
    the exit status of a payload the launcher killed (informative only: the verdict says what happened).

Whatever runs attempts instead of ``wb-run.sh`` later (a resident agent) must keep both properties: hold
the launch record's lock from before the spawn for exactly as long as the attempt can still write its
files, and decide "ended by itself" against "killed" by the exclusive creation of the verdict.

Attempts started by a broker from before the lock carry no ``"lock"`` key in their launch record; they are
recovered as before, from the pid file and /proc (:func:`candidate_pids`), and their kill reason from the
``killed`` file.

A pid alone is never trusted: the process must be the wrapper started for this very work directory (its
command line says so), checked after its pidfd is open, so a reused or forged pid names nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from broker.elf import elf
from broker.errors import ResourceError
from broker.ids import path_to_dirname

#: the wrapper script, shipped as package data next to this module
WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wb-run.sh")
_WRAPPER_NAME = os.fsencode(os.path.basename(WRAPPER))
#: work directory files of the local launcher (besides the elf's)
EXIT_FILE = "exit"
KILLED_EXIT_FILE = "killed_exit"
LAUNCH_FILE = "launch.json"
#: the kill reason of attempts started before the verdict file (see the module docstring)
LEGACY_KILLED_FILE = "killed"
#: kill verdicts the launcher writes into the exit file
KILL_REASONS = (elf.TIMEOUT, elf.CANCELLED)
#: opening the launch record to ask its lock: never through a symlink, never blocking on a FIFO that the
#: payload's account (which owns the directory) may have put there (see elf.open_regular)
_LOCK_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def attempt_dir(root: str | os.PathLike[str], workflow_global_id: str, node_path: str, attempt: int) -> Path:
    """The work directory of one attempt: ``<root>/<workflow global id>/<node path, [i] as @i>/<attempt>``.

    Defence in depth behind the path-safe node ids of descriptions (a workflow stored before they were
    required may hold a node ``..``, which ran in ``<root>/<workflow>/../1``, shared by every workflow):
    raises ResourceError, not retryable, unless the directory lies strictly inside its workflow's
    directory, both as written (no ``.``, ``..`` or empty segment) and once the symbolic links that already
    exist on the way are resolved.
    """
    base = os.path.normpath(os.fspath(root))  # the configured root may be written with '..' (--workdir ../w)
    workflow_dir = os.path.join(base, workflow_global_id)
    written = os.path.join(workflow_dir, path_to_dirname(node_path), str(attempt))
    inside = (os.path.normpath(written) == written and os.path.dirname(workflow_dir) == base
              and _strictly_under(os.path.realpath(written), os.path.realpath(workflow_dir)))
    if not inside:
        raise ResourceError(f"work directory {written!r} of node {node_path!r} is not inside its workflow's "
                            f"directory {workflow_dir}: refused", retryable=False)
    return Path(written)


def _strictly_under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def mkdirs(path: str) -> None:
    """Create ``path`` and its missing parents with mode 0700 (os.makedirs applies the mode to the leaf only)."""
    try:
        os.mkdir(path, 0o700)
    except FileNotFoundError:
        mkdirs(os.path.dirname(path))
        mkdirs(path)
    except FileExistsError:
        pass


def write_new(path: str, data: bytes, exclusive: bool = False) -> None:
    """Write a file of this attempt (mode 0600) in one call; ``exclusive``: FileExistsError if it exists.

    Never through a symbolic link: the directory may belong to the payload's account (broker.runas).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def lock_exclusive(path: str) -> int:
    """A descriptor of the launch record at ``path`` holding an exclusive ``flock``, to hand to the wrapper.

    Taken just before the spawn, on the record the launcher has just created exclusively, so never
    contended; the caller closes its own descriptor once the wrapper holds the lock.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_if_free(workdir: str) -> int | None:
    """A descriptor holding a shared lock on the launch record if nothing of the attempt holds it, else None.

    None means started and alive. The caller closes the descriptor; while it holds it, the attempt's files
    are final. FileNotFoundError without a launch record.
    """
    fd = os.open(os.path.join(workdir, LAUNCH_FILE), _LOCK_FLAGS)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_alive(workdir: str) -> bool:
    """Whether the attempt in ``workdir`` holds its launch record's lock (False without a record)."""
    try:
        fd = lock_if_free(workdir)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


def read_launch(workdir: str) -> dict:
    """The launch record (start time, timeout) of the attempt in ``workdir``; empty if unreadable."""
    handle = elf.open_regular(os.path.join(workdir, LAUNCH_FILE))
    if handle is None:
        return {}
    try:
        with handle:
            record = json.loads(handle.read(65536))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def claim(workdir: str, reason: str) -> bool:
    """Write the kill verdict ``reason`` unless the attempt already has a verdict; True if this call wrote it.

    False: the wrapper recorded the payload's exit status first (or a kill was recorded before). Raises
    OSError when the verdict cannot be written at all.
    """
    return elf.claim_file(os.path.join(workdir, EXIT_FILE), f"{reason}\n")


def read_exit(workdir: str, legacy: bool = False) -> tuple[int | None, str | None]:
    """(exit status, kill reason) from the verdict: (n, None) ended by itself; (n or None, reason) killed.

    (None, None): no verdict yet. ``legacy``: also read the kill reason of an attempt started before the
    verdict file.
    """
    text = _read_line(os.path.join(workdir, EXIT_FILE))
    if text in KILL_REASONS:
        return _read_int(os.path.join(workdir, KILLED_EXIT_FILE)), text
    code = _int(text)
    if legacy:
        reason = _read_line(os.path.join(workdir, LEGACY_KILLED_FILE))
        if reason in KILL_REASONS:
            return code, reason
    return code, None


def _read_line(path: str) -> str | None:
    """The one complete line of a small file (ending with a newline), without it; None otherwise."""
    handle = elf.open_regular(path)
    if handle is None:
        return None
    try:
        with handle:
            data = handle.read(64)
    except OSError:
        return None
    if not data.endswith(b"\n"):
        return None  # absent, or caught half written
    return data[:-1].decode("ascii", "replace").strip()


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_int(path: str) -> int | None:
    return _int(_read_line(path))


def read_pid(workdir: str) -> int | None:
    """The pid the wrapper recorded (its first instruction), None if it has not."""
    return _read_int(os.path.join(workdir, elf.PID_FILE))


def is_wrapper_of(pid: int, workdir: bytes) -> bool:
    """Whether process ``pid`` runs the wrapper for ``workdir`` (a reused pid does not)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().split(b"\0")
    except OSError:
        return False
    return len(args) >= 3 and os.path.basename(args[1]) == _WRAPPER_NAME and args[2] == workdir


def open_if_wrapper(pid: int, workdir: str) -> int | None:
    """A pidfd for ``pid`` if it is alive and is the wrapper of ``workdir``, else None."""
    if pid <= 1:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, ValueError, OSError):
        return None
    # Checked after opening: the pidfd then names the very process whose command line was read.
    if is_wrapper_of(pid, os.fsencode(workdir)):
        return pidfd
    os.close(pidfd)
    return None


def candidate_pids(workdir: str, job_id: str | None, scan: bool = True) -> Iterator[int]:
    """Pids that may be the wrapper of ``workdir``: its pid file, the job id, then (``scan``) any found in /proc."""
    yield from dict.fromkeys(p for p in (read_pid(workdir), _int(job_id) if job_id else None) if p)
    if not scan:
        return
    # The wrapper has not written its pid (yet): a broker died between spawning it and that first
    # instruction, or the wrapper is slow to start.
    target = os.fsencode(workdir)
    for name in os.listdir("/proc"):
        if name.isdigit() and is_wrapper_of(int(name), target):
            yield int(name)
