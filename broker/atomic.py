"""Writing a local file so that a reader sees either the old content or the whole new one, never a part.

The new content goes to a partial file beside the target (``.NAME.<pid>-<token>.partial``: hidden, unique
per writer, and ending in ``.partial`` so that directory walks can skip it), is flushed and fsynced, then
renamed over the target. On an error the partial file is removed and the target is left as it was. The
partial file is created exclusively and never through a symbolic link: a directory others may write to
cannot hand the writer a file of theirs.

The compute-side elf (``broker/elf/elf.py``) keeps its own copy: it is shipped alone to compute hosts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import BinaryIO

PARTIAL_SUFFIX = ".partial"


def partial_name(name: str) -> str:
    """The name of a partial file of ``name`` written by this process."""
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}"


def partial_writer(filename: str, name: str) -> int | None:
    """The process id that wrote ``filename`` as a partial file of ``name`` (None: it is not one)."""
    prefix = f".{name}."
    if not (filename.startswith(prefix) and filename.endswith(PARTIAL_SUFFIX)):
        return None
    pid = filename[len(prefix):-len(PARTIAL_SUFFIX)].partition("-")[0]
    return int(pid) if pid.isdigit() else None


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, mode: int = 0o666,
                 exact_mode: bool = False) -> Iterator[BinaryIO]:
    """A binary file to fill with ``target``'s new content, renamed over ``target`` when the block ends
    without an error. ``mode`` is that of a new file (less the umask, unless ``exact_mode``).

    The caller creates the directory. Raises OSError as the file operations do.
    """
    folder, name = os.path.split(os.fspath(target))
    partial = os.path.join(folder, partial_name(name))
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            if exact_mode:
                os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


__all__ = ["PARTIAL_SUFFIX", "atomic_write", "partial_name", "partial_writer"]
