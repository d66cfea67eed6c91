"""The files of a local attempt's work directory, and how its wrapper process is found again.

Besides the elf's files (``payload``, ``stdout``, ``stderr``, ``pid``): ``exit`` (the payload's exit
status, written by the wrapper ``wb-run.sh``), ``launch.json`` (start time and timeout, for a broker that
adopts the attempt) and ``killed`` (why the launcher killed it: ``timeout`` or ``cancelled``, written before
the first signal). A pid alone is not trusted after a restart: the process must be the wrapper started for
this very work directory (its command line says so), checked after its pidfd is open.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from broker.elf import elf

#: the wrapper script, shipped as package data next to this module
WRAPPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wb-run.sh")
_WRAPPER_NAME = os.fsencode(os.path.basename(WRAPPER))
#: work directory files of the local launcher (besides the elf's)
EXIT_FILE = "exit"
LAUNCH_FILE = "launch.json"
KILLED_FILE = "killed"


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


def read_launch(workdir: str) -> dict:
    """The launch record (start time, timeout) of the attempt in ``workdir``; empty if unreadable."""
    try:
        with open(os.path.join(workdir, LAUNCH_FILE), "rb") as handle:
            record = json.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def read_reason(workdir: str) -> str | None:
    """Why the launcher killed the attempt in ``workdir`` (timeout or cancelled), None if it did not."""
    try:
        with open(os.path.join(workdir, KILLED_FILE), "rb") as handle:
            reason = handle.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return reason if reason in (elf.TIMEOUT, elf.CANCELLED) else None


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
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, ValueError, OSError):
        return None
    # Checked after opening: the pidfd then names the very process whose command line was read.
    if is_wrapper_of(pid, os.fsencode(workdir)):
        return pidfd
    os.close(pidfd)
    return None


def candidate_pids(workdir: str, job_id: str | None) -> Iterator[int]:
    """Pids that may be the wrapper of ``workdir``: its pid file, the job id, then any found in /proc."""
    yield from dict.fromkeys(p for p in (elf.read_int_file(os.path.join(workdir, elf.PID_FILE)),
                                         int(job_id) if job_id else None) if p)
    # The broker may have died between starting the wrapper and the wrapper writing its pid.
    target = os.fsencode(workdir)
    for name in os.listdir("/proc"):
        if name.isdigit() and is_wrapper_of(int(name), target):
            yield int(name)
