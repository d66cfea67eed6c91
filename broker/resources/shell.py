"""Running commands and moving files on a host: the one seam between launchers and the machines they drive.

A :class:`Shell` runs a POSIX ``sh`` command line on a host as one account and moves files there. Two real
implementations: :class:`LocalShell` (this machine: a batch system submitted to from the broker's host, as
the owner's account when the broker is root, see :mod:`broker.runas`) and
``broker.resources.sshpool.SshShell`` (a pooled SSH connection). The PBS and MOAB
tests inject a recorded-output shell through the same interface, because no such server can be installed
here.

Every value that goes into a command line is quoted with :func:`shlex.quote` by the caller; nothing here
interprets text.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol

from broker import runas
from broker.atomic import atomic_write
from broker.errors import ResourceError
from broker.runas import RunAs

#: bytes a command may print on stdout or stderr before it is cut off (a probe of many attempts is large)
MAX_OUTPUT_BYTES = 256 * 1024**2
#: bytes copied per chunk in transfers
CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Completed:
    """A command that ran to its end."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        """stdout as text (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        """stderr as one stripped line of text, for messages."""
        return " ".join(self.stderr.decode("utf-8", "replace").split())[:1000]


class ShellError(ResourceError):
    """Raised when a command could not be run to its end; ``ambiguous``: it may have run anyway."""

    def __init__(self, message: str, *, ambiguous: bool = False, retryable: bool = True):
        super().__init__(message, retryable=retryable)
        self.ambiguous = ambiguous


class Shell(Protocol):
    """Commands and files on one host, as one account."""

    #: ``login@host``, for messages
    label: str

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Completed:
        """Run ``sh -c command``; raise ShellError when it could not run to its end (never for an exit code)."""

    def put(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write a whole file atomically (temporary name, then rename)."""

    def upload(self, local: str, remote: str, max_bytes: int) -> int:
        """Copy a local file to ``remote`` atomically; returns its size. ResourceError over ``max_bytes``."""

    def download(self, remote: str, local: str, max_bytes: int) -> int:
        """Copy a regular file (never a symlink) to ``local`` atomically; returns its size."""


def _too_big(what: str, size: int, max_bytes: int) -> ResourceError:
    return ResourceError(f"{what} is {size} bytes, over the staging limit of {max_bytes}", retryable=False)


class LocalShell:
    """Commands and files on this machine, as ``run_as`` (None: the broker's own user).

    As another account, commands start with its credentials and clean environment in its home directory,
    and files are read and written by a child process running as it (:func:`broker.runas.copy`), so the
    broker's own rights never touch that account's directories.
    """

    def __init__(self, label: str = "localhost", *, command_timeout: float = 60.0, run_as: RunAs | None = None):
        self.label = label
        self._timeout = command_timeout
        self.run_as = run_as
        if run_as is None:
            self._start = functools.partial(subprocess.Popen, cwd=os.path.expanduser("~"))
        else:
            self._start = functools.partial(runas.popen, run_as, cwd=run_as.home)

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Completed:
        """Run ``/bin/sh -c command`` in the home directory (as an SSH session would)."""
        try:
            proc = self._start(["/bin/sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        except OSError as exc:
            raise ShellError(f"{self.label}: cannot run /bin/sh: {exc.strerror}") from None
        with proc:
            try:
                out, err = proc.communicate(stdin or b"", timeout=timeout or self._timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise ShellError(f"{self.label}: command timed out after {timeout or self._timeout:g} s",
                                 ambiguous=True) from None
        return Completed(proc.returncode, out, err)

    def put(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``path`` atomically with ``mode``."""
        if self.run_as is not None:
            fd = os.memfd_create("put", os.MFD_CLOEXEC)
            try:
                os.write(fd, data)
                os.lseek(fd, 0, os.SEEK_SET)
                runas.copy(self.run_as, fd, self._home_path(path), len(data), mode=mode)
            finally:
                os.close(fd)
            return
        with atomic_write(os.path.expanduser(path), mode=mode, exact_mode=True) as fh:
            fh.write(data)

    def upload(self, local: str, remote: str, max_bytes: int) -> int:
        """Copy ``local`` to ``remote`` on this machine."""
        if self.run_as is not None:
            try:
                fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise ResourceError(f"cannot read {local}: {exc.strerror}", retryable=False) from None
            try:
                return runas.copy(self.run_as, fd, self._home_path(remote), max_bytes)
            finally:
                os.close(fd)
        return _copy(local, os.path.expanduser(remote), max_bytes)

    def download(self, remote: str, local: str, max_bytes: int) -> int:
        """Copy ``remote`` (a regular file, not a symlink) to ``local``."""
        if self.run_as is not None:
            with atomic_write(local, mode=0o600) as fh:
                return runas.copy(self.run_as, self._home_path(remote), fh.fileno(), max_bytes, no_symlink=True)
        remote = os.path.expanduser(remote)
        if os.path.islink(remote):
            raise ResourceError(f"{self.label}:{remote} is a symbolic link: refused", retryable=False)
        return _copy(remote, local, max_bytes)

    def _home_path(self, path: str) -> str:
        """``path`` as the account sees it: ``~`` and relative paths are in its home directory."""
        assert self.run_as is not None
        if path.startswith("~/"):
            path = path[2:]
        return os.path.join(self.run_as.home, path)


def _copy(source: str, target: str, max_bytes: int) -> int:
    try:
        size = os.stat(source).st_size
    except OSError as exc:
        raise ResourceError(f"cannot read {source}: {exc.strerror}", retryable=False) from None
    if size > max_bytes:
        raise _too_big(source, size, max_bytes)
    try:
        with open(source, "rb") as src, atomic_write(target) as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except OSError as exc:
        raise ResourceError(f"cannot copy {source} to {target}: {exc.strerror}") from None
    return size


__all__ = ["CHUNK", "Completed", "LocalShell", "MAX_OUTPUT_BYTES", "Shell", "ShellError"]
