"""Archive targets: a directory, local (``file://``) or on a catalogue host (``sftp://``), where archives live.

Writes are atomic: a file is written under a temporary name in its final directory, synced, then renamed
into place (over SFTP: uploaded to a temporary name, then renamed with the POSIX rename extension), so a
reader never sees half a file. :meth:`sync` then makes the renames themselves durable (fsync of the
directory; remotely, ``sync`` of the written files and their directory, best effort).

Where archives may be written:

* ``file:///DIR``: DIR must lie inside ``[archive] roots`` (symbolic links resolved);
* ``sftp://HOST/DIR``: HOST is a host of the catalogue with ``<ssh>``; the URI must start with one of
  ``[archive] remote_roots``. The transfer runs as the acting broker user's account on that host (the
  admin's; the CLI's operator), through the SSH pool's shared connection. ``sftp://HOST/~/DIR`` is relative
  to the account's home. No ``..``, user, port or query in the URI.

Reading (``--list``, ``--show``) goes through the same classes, without the root checks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import posixpath
import re
import shlex
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote, unquote, urlsplit

from broker.atomic import PARTIAL_SUFFIX, atomic_write, partial_writer
from broker.config import ArchiveSettings
from broker.errors import ConfigError, NotFound, ResourceError

T = TypeVar("T")
#: archive document names: the workflow's global id
DOCUMENT_RE = re.compile(r"wf-[0-9a-hjkmnp-tv-z]{18}\.xml")
#: the largest file the upload helper is asked to accept (archives are bounded by the database's size)
UPLOAD_LIMIT = 1 << 62


class Target(Protocol):
    """A directory holding archives."""

    uri: str

    def write(self, name: str, produce: Callable[[IO[bytes]], T]) -> T:
        """Write file ``name`` atomically with what ``produce`` writes into the file object it is given."""

    def sync(self) -> None:
        """Make the files written so far durable, names included."""

    def names(self) -> list[str]:
        """The archive documents here (``wf-....xml``), sorted."""

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Read file ``name`` (a regular file, never through a symbolic link). Raises NotFound."""

    def uri_of(self, name: str) -> str:
        """The URI of file ``name``."""


class FileTarget:
    """A local directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.uri = directory.as_uri()

    def write(self, name: str, produce: Callable[[IO[bytes]], T]) -> T:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._remove_stale(name)
            # archives hold users' outputs: readable by the broker's account only
            with atomic_write(self.directory / name, mode=0o600) as fh:
                result = produce(fh)
        except OSError as exc:
            raise ResourceError(f"cannot write {self.uri_of(name)}: {exc.strerror or exc}",
                                retryable=False) from None
        return result

    def _remove_stale(self, name: str) -> None:
        """Remove temporary files of ``name`` left by processes that died while writing it."""
        for stale in self.directory.glob(f".{glob.escape(name)}.*{PARTIAL_SUFFIX}"):
            pid = partial_writer(stale.name, name)
            if pid is not None and pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def sync(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if DOCUMENT_RE.fullmatch(n))
        except FileNotFoundError:
            raise NotFound(f"no archive directory {self.uri}") from None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        path = self.directory / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(f"no file {self.uri_of(name)}") from None
        except OSError as exc:
            raise ResourceError(f"cannot read {self.uri_of(name)}: {exc.strerror}", retryable=False) from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ResourceError(f"{self.uri_of(name)} is not a regular file", retryable=False)
            yield fh

    def uri_of(self, name: str) -> str:
        return (self.directory / name).as_uri()

    def close(self) -> None:
        """Nothing to release."""


class SftpTarget:
    """A directory on a catalogue host, over the SSH pool's SFTP."""

    def __init__(self, shell: Any, host: str, directory: str):
        self.shell = shell
        self.host = host
        self.directory = directory
        shown = directory if directory.startswith("/") else "/~/" + directory
        self.uri = f"sftp://{host}{quote(shown)}"
        self._written: list[str] = []

    def _path(self, name: str) -> str:
        return posixpath.join(self.directory, name)

    def write(self, name: str, produce: Callable[[IO[bytes]], T]) -> T:
        self._mkdirs()
        # the archive is made locally first: the upload then writes a temporary name and renames it
        with tempfile.NamedTemporaryFile(prefix="broker-archive-") as local:
            result = produce(local)
            local.flush()
            self.shell.upload(local.name, self._path(name), UPLOAD_LIMIT)
        self._written.append(self._path(name))
        return result

    def _mkdirs(self) -> None:
        with self.shell.sftp() as sftp:
            current = "/" if self.directory.startswith("/") else ""
            for part in [p for p in self.directory.split("/") if p]:
                current = posixpath.join(current, part) if current else part
                try:
                    info = sftp.stat(current)
                except FileNotFoundError:
                    sftp.mkdir(current, 0o700)
                    continue
                if not stat.S_ISDIR(info.st_mode or 0):
                    raise ResourceError(f"{self.uri}: {current} is not a directory", retryable=False)

    def sync(self) -> None:
        if not self._written:
            return
        # coreutils sync FILE... fsyncs each file; the directory too, so the renames are durable
        command = "sync -- " + " ".join(shlex.quote(p) for p in [*self._written, self.directory or "."])
        done = self.shell.run(command)
        if done.returncode != 0:
            raise ResourceError(f"{self.uri}: cannot sync the archive on {self.host}: {done.err.strip()}")
        self._written.clear()

    def names(self) -> list[str]:
        with self.shell.sftp() as sftp:
            try:
                return sorted(n for n in sftp.listdir(self.directory or ".") if DOCUMENT_RE.fullmatch(n))
            except FileNotFoundError:
                raise NotFound(f"no archive directory {self.uri}") from None

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        with self.shell.sftp() as sftp:
            try:
                info = sftp.lstat(self._path(name))
            except FileNotFoundError:
                raise NotFound(f"no file {self.uri_of(name)}") from None
            if not stat.S_ISREG(info.st_mode or 0):
                raise ResourceError(f"{self.uri_of(name)} is not a regular file", retryable=False)
            with sftp.open(self._path(name), "rb") as fh:
                fh.prefetch(info.st_size)
                yield fh

    def uri_of(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{quote(name)}"

    def close(self) -> None:
        """The pool's connection belongs to its owner."""


# ----------------------------------------------------------------------------------------- resolution

def _sftp_parts(uri: str) -> tuple[str, str]:
    """(catalogue host, directory) of ``sftp://HOST/DIR`` (``/~/DIR``: relative to the home directory)."""
    parts = urlsplit(uri)
    if parts.scheme != "sftp" or not parts.hostname or parts.username or parts.port or parts.query or \
            parts.fragment:
        raise ConfigError(f"{uri!r} is not sftp://HOST/DIR (HOST: a host of the catalogue; no user, port or query)")
    path = unquote(parts.path)
    if "\0" in path or ".." in path.split("/"):
        raise ConfigError(f"{uri!r}: the path must not contain '..'")
    if path in ("/~", "/~/") or path.startswith("/~/"):
        path = path[3:]
    return parts.hostname, path.rstrip("/") or ("/" if path.startswith("/") else "")


def _inside(directory: str, prefix: str) -> bool:
    """Whether ``directory`` is ``prefix`` or below it ("": the home directory, for relative paths)."""
    if prefix == "/":
        return directory.startswith("/")
    if prefix == "":
        return not directory.startswith("/")
    return directory == prefix or directory.startswith(prefix.rstrip("/") + "/")


def open_target(uri: str, settings: ArchiveSettings, resources: Any = None, user: str | None = None, *,
                for_write: bool = True) -> FileTarget | SftpTarget:
    """The target a URI names. ``for_write`` checks ``[archive] roots`` / ``remote_roots``.

    ``resources`` (a :class:`broker.resources.Resources`: catalogue, accounts, SSH pool) and ``user`` (whose
    account the SFTP session uses) are needed for ``sftp://``. Raises ConfigError for a URI that is not
    allowed, ResourceError for a host that cannot be used.
    """
    scheme = urlsplit(uri).scheme
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ConfigError(f"{uri!r} is not file:///DIR")
        directory = Path(unquote(parts.path)).resolve()
        if for_write and not any(_inside(str(directory), str(Path(r).resolve())) for r in settings.roots):
            allowed = " ".join(settings.roots) if settings.roots else "none configured"
            raise ConfigError(f"{uri} is outside the archive roots ([archive] roots: {allowed})")
        return FileTarget(directory)
    if scheme == "sftp":
        host_name, directory = _sftp_parts(uri)
        if for_write and not any(h == host_name and _inside(directory, d)
                                 for h, d in (_sftp_parts(r) for r in settings.remote_roots)):
            allowed = " ".join(settings.remote_roots) if settings.remote_roots else "none configured"
            raise ConfigError(f"{uri} is outside the remote archive roots ([archive] remote_roots: {allowed})")
        if resources is None or user is None:
            raise ConfigError(f"{uri}: sftp:// needs the host catalogue and an acting user")
        host = resources.catalogue.get(host_name)
        if host.ssh is None:
            raise ConfigError(f"{uri}: host '{host_name}' has no <ssh> in the catalogue")
        shell = resources.pool.shell(host, resources.accounts.account(user, host_name))
        return SftpTarget(shell, host_name, directory)
    raise ConfigError(f"unsupported archive location {uri!r} (expected file:///DIR or sftp://HOST/DIR)")
