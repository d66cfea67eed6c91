"""Running commands and moving files on a host: the one seam between launchers and the machines they drive.

A :class:`Shell` runs a POSIX ``sh`` command line on a host as one account and moves files there. Two real
implementations: :class:`LocalShell` (this machine, the broker's own user: a batch system submitted to from
the broker's host) and ``broker.resources.sshpool.SshShell`` (a pooled SSH connection). The PBS and MOAB
tests inject a recorded-output shell through the same interface, because no such server can be installed
here.

Every value that goes into a command line is quoted with :func:`shlex.quote` by the caller; nothing here
interprets text.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Protocol

from broker.errors import ResourceError

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
    """Commands and files on this machine, as the broker's own user."""

    def __init__(self, label: str = "localhost", *, command_timeout: float = 60.0):
        self.label = label
        self._timeout = command_timeout

    def run(self, command: str, *, stdin: bytes | None = None, timeout: float | None = None) -> Completed:
        """Run ``/bin/sh -c command`` in the home directory (as an SSH session would)."""
        try:
            done = subprocess.run(["/bin/sh", "-c", command], input=stdin or b"", capture_output=True,
                                  timeout=timeout or self._timeout, cwd=os.path.expanduser("~"), check=False)
        except subprocess.TimeoutExpired:
            raise ShellError(f"{self.label}: command timed out after {timeout or self._timeout:g} s",
                             ambiguous=True) from None
        except OSError as exc:
            raise ShellError(f"{self.label}: cannot run /bin/sh: {exc.strerror}") from None
        return Completed(done.returncode, done.stdout, done.stderr)

    def put(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``path`` atomically with ``mode``."""
        path = os.path.expanduser(path)
        partial = f"{path}.partial.{os.getpid()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(partial, path)

    def upload(self, local: str, remote: str, max_bytes: int) -> int:
        """Copy ``local`` to ``remote`` on this machine."""
        return _copy(local, os.path.expanduser(remote), max_bytes)

    def download(self, remote: str, local: str, max_bytes: int) -> int:
        """Copy ``remote`` (a regular file, not a symlink) to ``local``."""
        remote = os.path.expanduser(remote)
        if os.path.islink(remote):
            raise ResourceError(f"{self.label}:{remote} is a symbolic link: refused", retryable=False)
        return _copy(remote, local, max_bytes)


def _copy(source: str, target: str, max_bytes: int) -> int:
    try:
        size = os.stat(source).st_size
    except OSError as exc:
        raise ResourceError(f"cannot read {source}: {exc.strerror}", retryable=False) from None
    if size > max_bytes:
        raise _too_big(source, size, max_bytes)
    partial = f"{target}.partial.{os.getpid()}"
    try:
        with open(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise ResourceError(f"cannot copy {source} to {target}: {exc.strerror}") from None
    return size


__all__ = ["CHUNK", "Completed", "LocalShell", "MAX_OUTPUT_BYTES", "Shell", "ShellError"]
