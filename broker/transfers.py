"""File transfers of staging: copy a node's inputs into its work directory and its outputs out, safely.

Sources and targets are URIs. ``file://`` paths must lie inside the configured staging roots (after
resolving symlinks); paths inside the work directory are relative, never absolute, never containing
``..`` and never leading out of it through a symlink. Copies go to a temporary name and are renamed into
place once complete (and, when a checksum is given, verified), so a retried or interrupted transfer
never leaves a half-written file that looks finished. Other schemes (``sftp://``, ``http(s)://``) are
provided by the resources layer as :class:`Transports`, made for the node's owner and passed in.

With an :class:`Owner` (a root broker staging for another account) every ``file://`` path, and the work
directory when it is the account's, is opened by a child process running as that account
(:func:`broker.runas.copy`): a user reads and writes only what their account may. A transfer of another
scheme into or out of the account's directory passes through a file in the broker's own spool directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from broker import runas
from broker.atomic import atomic_write
from broker.description.model import Stage
from broker.errors import ResourceError

#: bytes read per chunk while copying and hashing
CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Transports:
    """The schemes beyond ``file://`` that one user's staging may use (made by
    :meth:`broker.resources.Resources.transports_for`, bound to the user's accounts)."""

    #: scheme -> fetch(uri, destination path, max_bytes), for stage-in
    fetch: Mapping[str, Callable[[str, Path, int], None]] = field(default_factory=dict)
    #: scheme -> push(source path, uri, max_bytes), for stage-out
    push: Mapping[str, Callable[[Path, str, int], None]] = field(default_factory=dict)


#: file:// only
LOCAL_ONLY = Transports()


def inside_workdir(workdir: Path, relative: str) -> Path:
    """The absolute path of ``relative`` inside ``workdir``; refuses anything that could leave it."""
    if not relative or relative.startswith("/") or "\0" in relative:
        raise ResourceError(f"staging path {relative!r} must be relative to the work directory", retryable=False)
    parts = Path(relative).parts
    if ".." in parts:
        raise ResourceError(f"staging path {relative!r} must not contain '..'", retryable=False)
    root = workdir.resolve()
    target = (root / relative)
    # resolve what exists of the path: a symlink on the way must not lead out of the work directory
    probe = target
    while not probe.exists() and probe != root:
        probe = probe.parent
    if root not in (probe.resolve(), *probe.resolve().parents):
        raise ResourceError(f"staging path {relative!r} leads out of the work directory", retryable=False)
    return target


def local_path(uri: str, roots: Sequence[str]) -> Path:
    """The local path of a ``file://`` URI, which must resolve inside one of ``roots``."""
    parts = urlsplit(uri)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise ResourceError(f"not a local file URI: {uri!r}", retryable=False)
    path = Path(unquote(parts.path)).resolve()
    for root in roots:
        base = Path(root).resolve()
        if path == base or base in path.parents:
            return path
    allowed = ", ".join(roots) if roots else "none configured ([staging] roots)"
    raise ResourceError(f"{uri} is outside the staging roots ({allowed})", retryable=False)


def verify(path: Path, checksum: str | None) -> None:
    if not checksum:
        return
    algorithm, _, expected = checksum.partition(":")
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ResourceError(f"checksum mismatch for {path.name}: expected {checksum}, got "
                            f"{algorithm}:{digest.hexdigest()}", retryable=True)


def _copy_file(source: Path, target: Path, max_bytes: int) -> None:
    if not source.is_file():
        raise ResourceError(f"no such file to stage: {source}", retryable=False)
    size = source.stat().st_size
    if size > max_bytes:
        raise ResourceError(f"{source} is {size} bytes, over the staging limit of {max_bytes}", retryable=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, atomic_write(target) as dst:
        shutil.copyfileobj(src, dst, CHUNK)


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose rights staging uses on this machine, when not the broker's own."""

    run_as: runas.RunAs
    #: the attempt directory belongs to the account (a node of a local host): the child opens it too
    owns_workdir: bool
    #: a directory of the broker's own that other schemes' transfers pass through
    spool: Path


def stage_in(stage: Stage, workdir: Path, roots: Sequence[str], max_bytes: int, owner: Owner | None = None,
             transports: Transports = LOCAL_ONLY) -> None:
    """Bring one input into the work directory."""
    target = inside_workdir(workdir, stage.target)
    scheme = urlsplit(stage.source).scheme
    if owner is not None and (scheme == "file" or owner.owns_workdir):
        _stage_in_as(owner, stage, scheme, target, roots, max_bytes, transports)
        return
    if scheme == "file":
        _copy_file(local_path(stage.source, roots), target, max_bytes)
    elif scheme in transports.fetch:
        target.parent.mkdir(parents=True, exist_ok=True)
        transports.fetch[scheme](stage.source, target, max_bytes)
    else:
        raise ResourceError(f"unsupported stage-in source {stage.source!r}", retryable=False)
    verify(target, stage.checksum)


def stage_out(stage: Stage, workdir: Path, roots: Sequence[str], max_bytes: int, owner: Owner | None = None,
              transports: Transports = LOCAL_ONLY) -> None:
    """Copy one output of the work directory to its target."""
    source = inside_workdir(workdir, stage.source)
    scheme = urlsplit(stage.target).scheme
    if owner is not None and (scheme == "file" or owner.owns_workdir):
        _stage_out_as(owner, stage, scheme, source, roots, max_bytes, transports)
        return
    verify(source, stage.checksum)
    if scheme == "file":
        _copy_file(source, local_path(stage.target, roots), max_bytes)
    elif scheme in transports.push:
        transports.push[scheme](source, stage.target, max_bytes)
    else:
        raise ResourceError(f"unsupported stage-out target {stage.target!r}", retryable=False)


# ----------------------------------------------------------------------------------- as the owner's account

def _stage_in_as(owner: Owner, stage: Stage, scheme: str, target: Path, roots: Sequence[str],
                 max_bytes: int, transports: Transports) -> None:
    if scheme == "file":
        source = str(local_path(stage.source, roots))
        if owner.owns_workdir:
            runas.copy(owner.run_as, source, str(target), max_bytes, checksum=stage.checksum)
        else:
            with _broker_file(target) as fd:
                runas.copy(owner.run_as, source, fd, max_bytes, checksum=stage.checksum)
        return
    if scheme not in transports.fetch:
        raise ResourceError(f"unsupported stage-in source {stage.source!r}", retryable=False)
    with _spooled(owner.spool) as spooled:
        transports.fetch[scheme](stage.source, spooled, max_bytes)
        fd = os.open(spooled, os.O_RDONLY | os.O_CLOEXEC)
        try:
            runas.copy(owner.run_as, fd, str(target), max_bytes, checksum=stage.checksum)
        finally:
            os.close(fd)


def _stage_out_as(owner: Owner, stage: Stage, scheme: str, source: Path, roots: Sequence[str],
                  max_bytes: int, transports: Transports) -> None:
    # the source as the child opens it: a path in the account's directory, else a descriptor of the broker's
    with contextlib.ExitStack() as stack:
        if owner.owns_workdir:
            opened: str | int = str(source)
        else:
            try:
                opened = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ResourceError(f"no such file to stage: {source}", retryable=False) from None
            stack.callback(os.close, opened)
        if scheme == "file":
            target = str(local_path(stage.target, roots))
            runas.copy(owner.run_as, opened, target, max_bytes, checksum=stage.checksum)
            return
        if scheme not in transports.push:
            raise ResourceError(f"unsupported stage-out target {stage.target!r}", retryable=False)
        spooled = stack.enter_context(_spooled(owner.spool))
        with _broker_file(spooled) as fd:
            runas.copy(owner.run_as, opened, fd, max_bytes, checksum=stage.checksum)
        transports.push[scheme](spooled, stage.target, max_bytes)


@contextlib.contextmanager
def _broker_file(target: Path) -> Iterator[int]:
    """A descriptor to fill with ``target``'s content (the broker's side), renamed into place if no error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target, mode=0o600) as fh:
        yield fh.fileno()


@contextlib.contextmanager
def _spooled(spool: Path) -> Iterator[Path]:
    """A file name in a private directory of the broker's, removed afterwards with whatever it holds."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=spool) as folder:
        yield Path(folder) / "file"
