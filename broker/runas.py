"""Running as an account of this machine: local payloads, local batch commands and local staging.

A broker running as root starts every local payload as its owner's account (the accounts mapping,
:mod:`broker.resources.accounts`): that account's uid, gid and groups, umask 077, and a clean environment
(HOME, USER, LOGNAME and SHELL of the account, a fixed PATH and LANG; nothing of the broker's own). File
work done for an account on this machine (``file://`` staging, a local batch host's files) runs in a short
child process as that account (:func:`copy`), never under the broker's own rights and never by changing
them: credentials belong to the whole process, and the broker is threaded.

Attempt directories of switched accounts belong to the account (mode 0700); the directories above them are
the broker's, mode 0711 (traversable, not listable), and the broker refuses to start when its work root
cannot be traversed (:func:`check_traversable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import ConfigError, ResourceError

#: PATH and LANG of a payload started as another account (nothing of the broker's environment is passed on)
PATH = "/usr/local/bin:/usr/bin:/bin"
LANG = "C.UTF-8"
UMASK = 0o077
#: mode of the broker's directories above attempt directories: accounts pass through, never list
TRAVERSE_MODE = 0o711
#: seconds a looked-up account (uid, gid, groups) is reused: a group change applies to what starts after
LOOKUP_TTL = 60.0
#: seconds the account's side of a copy may take to end once the bytes have passed
COPY_TIMEOUT = 600.0
#: bytes per read when copying
CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RunAs:
    """An account of this machine that payloads and file work run as (the broker being root)."""

    login: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    def environment(self) -> dict[bytes, bytes]:
        """The clean environment of this account, encoded once by callers that start many processes."""
        return {b"HOME": os.fsencode(self.home), b"USER": os.fsencode(self.login),
                b"LOGNAME": os.fsencode(self.login), b"SHELL": os.fsencode(self.shell),
                b"PATH": PATH.encode(), b"LANG": LANG.encode()}

    def credentials(self) -> dict:
        """subprocess.Popen keyword arguments that switch a child to this account (makes Popen fork, not vfork)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups), "umask": UMASK}


#: the switch of credentials without a fork of the broker: util-linux setpriv (None: Popen's own, a fork)
SETPRIV = shutil.which("setpriv", path="/usr/bin:/bin")
#: how a payload gets an environment a user chose (see :func:`exports`): read by a shell already running as
#: the account (``sh -c SOURCE ENVFILE PROGRAM ARGS...``), then the program is exec'd
SOURCE = '. "$0" && exec "$@"'
_ENV_NAME = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


def popen(run_as: RunAs, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` as ``run_as`` (umask 077) in that account's clean environment; other arguments as Popen's.

    Popen's own ``user=`` makes CPython fork the broker, whose cost grows with its memory (10 ms of CPU, and
    far more wall time on a busy machine, at 300 MB), where a start as the broker itself is a vfork (0.2 ms).
    So the child is util-linux ``setpriv``, which switches uid, gid and groups and execs ``argv``. It runs as
    root, so it gets only the account's environment (from the password file, PATH and LANG fixed), never
    one a user chose: a payload's own variables go through :data:`SOURCE`.
    """
    env = run_as.environment()
    if SETPRIV is None:
        return subprocess.Popen(argv, env=env, **kwargs, **run_as.credentials())
    groups = f"--groups={','.join(map(str, run_as.groups))}" if run_as.groups else "--clear-groups"
    return subprocess.Popen([SETPRIV, f"--reuid={run_as.uid}", f"--regid={run_as.gid}", groups, "--", *argv],
                            env=env, umask=UMASK, **kwargs)


def exports(env: Mapping[bytes, bytes]) -> bytes:
    """``env`` as sh statements that export it, for :data:`SOURCE` (every value quoted; names checked)."""
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ResourceError(f"environment variable name {name!r} is not valid", retryable=False)
        lines.append(b"export " + name + b"='" + value.replace(b"'", b"'\\''") + b"'\n")
    return b"".join(lines)


_cache: dict[str, tuple[float, RunAs]] = {}
_cache_lock = threading.Lock()


def lookup(login: str) -> RunAs:
    """The account ``login`` of this machine; ResourceError (not retryable) when there is none."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(login)
    if hit is not None and now - hit[0] < LOOKUP_TTL:
        return hit[1]
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        raise ResourceError(f"account '{login}' does not exist on this machine", retryable=False) from None
    groups = tuple(sorted(set(os.getgrouplist(login, entry.pw_gid))))
    found = RunAs(login, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir or "/", entry.pw_shell or "/bin/sh")
    with _cache_lock:
        _cache[login] = (now, found)
    return found


def is_root() -> bool:
    """Whether the broker may start processes as other accounts."""
    return os.geteuid() == 0


def own_login() -> str:
    """The broker's own account name (from its uid, not from the environment, which a caller sets)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a container user without a passwd entry
        import getpass

        return getpass.getuser()


# ------------------------------------------------------------------------------------------- directories

def _make_parents(path: str, mode: int) -> None:
    """Create ``path`` and its missing parents, each with exactly ``mode`` (whatever the umask)."""
    try:
        os.mkdir(path, mode)
    except FileNotFoundError:
        _make_parents(os.path.dirname(path), mode)
        _make_parents(path, mode)
        return
    except FileExistsError:
        return
    if mode & 0o077:
        os.chmod(path, mode)  # the umask may have taken the bits others need


def make_workdir(path: str, run_as: RunAs | None, *, switching: bool | None = None) -> None:
    """Create an attempt's work directory (0700) and its parents; with ``run_as`` it belongs to that account.

    Parents are the broker's: mode 0711 in a broker that switches accounts (``switching``, by default whether
    ``run_as`` is given), so an account reaches its own directory without seeing anyone else's; 0700
    otherwise. An existing directory is taken over only from the broker itself (stage-in made it), never from
    another account, and never through a symbolic link.
    """
    switching = run_as is not None if switching is None else switching
    _make_parents(os.path.dirname(path), TRAVERSE_MODE if switching else 0o700)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    if run_as is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ResourceError(f"work directory {path}: {exc.strerror}", retryable=False) from None
    try:
        _take(fd, path, run_as)
    finally:
        os.close(fd)


def make_subdirs(workdir: str, relative: str, run_as: RunAs | None) -> str:
    """Create ``relative`` (a payload's working directory) inside ``workdir``; returns its path.

    One component at a time, each opened without following links: with ``run_as`` the directory belongs to
    the account, whose processes could otherwise point the broker anywhere.
    """
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ResourceError(f"working directory {relative!r} must not contain '..'", retryable=False)
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
            if run_as is not None:
                _take(fd, os.path.join(workdir, *parts), run_as)
    finally:
        os.close(fd)
    return os.path.join(workdir, *parts)


def _take(fd: int, path: str, run_as: RunAs) -> None:
    """Give an open directory of the broker's (or already the account's) to the account, mode 0700."""
    st = os.fstat(fd)
    if st.st_uid not in (run_as.uid, os.geteuid()):
        raise ResourceError(f"work directory {path} belongs to uid {st.st_uid}, not to account "
                            f"'{run_as.login}'", retryable=False)
    if (st.st_uid, st.st_gid) != (run_as.uid, run_as.gid):
        os.fchown(fd, run_as.uid, run_as.gid)
    if st.st_mode & 0o7777 != 0o700:
        os.fchmod(fd, 0o700)


def write_owned(path: str, data: bytes, run_as: RunAs | None) -> None:
    """Write a file (mode 0600) into an attempt's directory, owned by ``run_as`` when given.

    Never through a symbolic link: the directory belongs to the account, whose other processes could
    plant one for the broker to follow.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if run_as is not None:
            os.fchown(fd, run_as.uid, run_as.gid)
        os.write(fd, data)
    finally:
        os.close(fd)


def check_traversable(root: Path) -> None:
    """Refuse a work root that other accounts cannot reach: each directory above it must let others pass.

    The root itself, when the broker owns it, is made 0711. Raises ConfigError naming ``[engine] workdir``.
    """
    st = root.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o011 != 0o011:
        os.chmod(root, (st.st_mode & 0o7777) | 0o011)
    for directory in (root, *root.parents):
        mode = directory.stat().st_mode
        if not mode & 0o001:
            raise ConfigError(f"the work root {root} cannot be traversed by the accounts local payloads run as "
                              f"({directory} is mode {mode & 0o7777:04o}): set [engine] workdir to a directory "
                              f"every account can reach, e.g. /var/lib/workflow-broker/work, or [engine] "
                              "run_as_broker_account = true for a single-user broker")


# -------------------------------------------------------------------------------------------------- copy
#
# The account's side of a copy is a `cat` started as the account (the broker's Python may live where the
# account cannot read it, as under /root/.pyenv); the bytes pass through the broker, which counts them against
# the limit and hashes them, and a target file is renamed into place only once complete and verified.

_READ = 'if [ "$2" = nofollow ] && [ -L "$1" ]; then echo "$1 is a symbolic link: refused" >&2; exit 3; fi; ' \
        'exec cat -- "$1"'
_WRITE = 'umask 077; mkdir -p -- "$1" && exec cat >"$2"'
_FINISH = 'sync -- "$1" 2>/dev/null; chmod "$3" -- "$1" && exec mv -f -- "$1" "$2"'
_DISCARD = 'exec rm -f -- "$1"'

Endpoint = str | int  # a path (opened by a child, with the account's rights) or a descriptor the broker opened


class _Child:
    """One short process as an account, its standard error kept in memory (it cannot block on a full pipe)."""

    def __init__(self, run_as: RunAs, script: str, *args: str, stdin: int = subprocess.DEVNULL,
                 stdout: int = subprocess.DEVNULL):
        self.err = os.memfd_create("stderr", os.MFD_CLOEXEC)
        try:
            self.proc = popen(run_as, ["/bin/sh", "-c", script, "sh", *args], stdin=stdin, stdout=stdout,
                              stderr=self.err, close_fds=True, cwd=run_as.home if os.path.isdir(run_as.home) else "/")
        except OSError as exc:
            os.close(self.err)
            raise ResourceError(f"cannot start a process as account '{run_as.login}': {exc.strerror}",
                                retryable=False) from None

    def finish(self, timeout: float = COPY_TIMEOUT) -> tuple[int, str]:
        """Wait for the end: (exit status, the last line of its standard error)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        os.lseek(self.err, 0, os.SEEK_SET)
        text = os.read(self.err, 4096).decode("utf-8", "replace").strip()
        os.close(self.err)
        return code, (text.splitlines() or [""])[-1]


def _reason(line: str) -> str:
    """``Permission denied`` from ``cat: /x: Permission denied`` or ``sh: 1: cannot create /x: ...``."""
    return line.rpartition(": ")[2] or "failed"


def copy(run_as: RunAs, source: Endpoint, target: Endpoint, max_bytes: int, *, checksum: str | None = None,
         mode: int = 0o600, no_symlink: bool = False) -> int:
    """Copy ``source`` to ``target`` with ``run_as``'s rights on its paths; returns the size copied.

    A path is opened by a child process running as the account, so a user reads and writes only what their
    account may; a descriptor is one the broker opened on its own side. A target path is written to a
    temporary name next to it, synced and renamed once complete (and, with ``checksum``, verified: a mismatch
    leaves the target as it was). ``no_symlink``: refuse a source path that is a symbolic link. Raises
    ResourceError saying what went wrong (not retryable when it is a matter of rights).
    """
    algorithm, _, expected = (checksum or "").partition(":")
    digest = hashlib.new(algorithm) if checksum else None
    reader = writer = None
    partial = ""
    try:
        if isinstance(source, str):
            reader = _Child(run_as, _READ, source, "nofollow" if no_symlink else "", stdout=subprocess.PIPE)
            src = reader.proc.stdout.fileno()
        else:
            src = source
        if isinstance(target, str):
            folder, name = os.path.split(target)
            partial = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial")
            writer = _Child(run_as, _WRITE, folder or ".", partial, stdin=subprocess.PIPE)
            dst = writer.proc.stdin.fileno()
        else:
            dst = target
        size = _pump(src, dst, max_bytes, digest, source)
        if reader is not None:
            code, line = reader.finish()
            reader = None
            if code != 0:
                if "No such file or directory" in line:
                    raise ResourceError(f"no such file to stage: {source}", retryable=False)
                if code == 3:
                    raise ResourceError(f"{line} (as account '{run_as.login}')", retryable=False)
                raise _failed(f"cannot read {source}", line, run_as.login)
        if writer is not None:
            writer.proc.stdin.close()
            code, line = writer.finish()
            writer = None
            if code != 0:
                raise _failed(f"cannot write {target}", line, run_as.login)
        if digest is not None and digest.hexdigest() != expected:
            what = os.path.basename(target if isinstance(target, str) else str(source))
            raise ResourceError(f"checksum mismatch for {what}: expected {checksum}, got "
                                f"{algorithm}:{digest.hexdigest()}", retryable=True)
        if partial:
            code, line = _Child(run_as, _FINISH, partial, str(target), f"{mode:o}").finish()
            if code != 0:
                raise _failed(f"cannot write {target}", line, run_as.login)
            partial = ""
        return size
    except BrokenPipeError:
        # the writer ended early: what it says is why
        code, line = writer.finish() if writer is not None else (1, "")
        writer = None
        raise _failed(f"cannot write {target}", line, run_as.login) from None
    finally:
        for child in (reader, writer):
            if child is not None:  # something failed on the way: end it
                child.proc.kill()
                child.finish()
        if partial:
            _Child(run_as, _DISCARD, partial).finish()


def _pump(src: int, dst: int, max_bytes: int, digest: Any, source: Endpoint) -> int:
    size = 0
    while chunk := os.read(src, CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ResourceError(f"{source if isinstance(source, str) else 'the file'} is over the staging limit "
                                f"of {max_bytes} bytes", retryable=False)
        if digest is not None:
            digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
    return size


#: what a child's failure may say that a later attempt can find changed (rights, missing paths: it cannot)
_TRANSIENT = ("No space left on device", "Input/output error", "Disk quota exceeded", "failed")


def _failed(what: str, line: str, login: str) -> ResourceError:
    reason = _reason(line)
    return ResourceError(f"{what}: {reason} (as account '{login}')", retryable=reason in _TRANSIENT)


__all__ = ["LANG", "PATH", "RunAs", "TRAVERSE_MODE", "UMASK", "check_traversable", "copy", "is_root", "lookup",
           "exports", "make_subdirs", "make_workdir", "own_login", "popen", "write_owned"]
