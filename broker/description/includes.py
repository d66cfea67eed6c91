"""Files a description refers to (``<payload ref=...>``, parameter value files): only inside the configured
include directories, only regular UTF-8 files within ``[limits] max_file_bytes``.

A reference that leaves the directories (``..``, an absolute path elsewhere, a symbolic link pointing out)
is refused without saying whether the file exists; opening never follows a final symbolic link and never
blocks on a FIFO.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from broker.config import Settings


class IncludeError(Exception):
    """Raised when a referenced file may not or cannot be read; the message completes "payload ref 'x' ..."."""


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def resolve_include(ref: str, include_dirs: tuple[str, ...]) -> Path:
    """The real path of a referenced file inside the include directories (tried in order).

    Raises IncludeError when no include directory is configured, when the path leaves them (``..``, an
    absolute path elsewhere, or a symlink pointing out) or when no directory holds the file. Whether a path
    outside the directories exists is never revealed.
    """
    if not include_dirs:
        raise IncludeError("cannot be read: file references are not allowed "
                            "(no [description] include_dirs configured)")
    roots = [os.path.realpath(d) for d in include_dirs]
    lexical_roots = [os.path.normpath(os.path.abspath(d)) for d in include_dirs]
    if os.path.isabs(ref):
        if not _inside(os.path.normpath(ref), roots + lexical_roots):
            raise IncludeError("is outside the include directories")
        candidates = [ref]
    else:
        normal = os.path.normpath(ref)
        if normal == ".." or normal.startswith(".." + os.sep):
            raise IncludeError("is outside the include directories")
        candidates = [os.path.join(root, normal) for root in roots]
    escaped = False
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if not os.path.lexists(real):
            continue
        if _inside(real, roots):
            return Path(real)
        escaped = True
    if escaped:
        raise IncludeError("is outside the include directories (a symbolic link points out of them)")
    raise IncludeError("was not found in the include directories")


def read_include(ref: str, settings: Settings) -> str:
    """The UTF-8 text of a referenced file, within ``[limits] max_file_bytes``. Raises IncludeError."""
    path = resolve_include(ref, settings.description.include_dirs)
    limit = settings.limits.max_file_bytes
    try:
        # O_NONBLOCK: opening a FIFO planted in an include directory must not hang validation
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise IncludeError(f"cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IncludeError("is not a regular file")
        if info.st_size > limit:
            raise IncludeError(f"is {info.st_size} bytes, over the limit of {limit} bytes ([limits] max_file_bytes)")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise IncludeError(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise IncludeError(f"is over the limit of {limit} bytes ([limits] max_file_bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IncludeError("is not UTF-8 text") from None
