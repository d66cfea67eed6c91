"""One (host, account) as the launchers see it: a shell, a private work root, the elf and the host agent.

The elf, the host agent and the resident agent are installed once per host, account and version, as
``<root>/.broker/elf-<version>.py``, ``agent-<version>.py`` and ``resident-<version>.py`` (written to a
temporary name and renamed, so concurrent installers never leave a half file), then used by every node
there; a resident agent keeps its socket and journal in ``<root>/.broker/resident-<version>/``. The version is a hash
of the three files, so a broker upgrade installs the new pair beside the old one, which attempts still running keep
using. They live under the account's private root, never in a directory another account could write:
the broker only ever runs code that account itself owns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broker.elf import agent as resident_module
from broker.elf import elf as elf_module
from broker.errors import ResourceError
from broker.ids import GLOBAL_ID_RE
from broker.launchers import hostagent
from broker.resources.accounts import Account, work_root
from broker.resources.catalogue import Host
from broker.resources.shell import Completed, Shell, ShellError

log = logging.getLogger(__name__)

#: what a remote path may contain: it goes into command lines and batch script directives
SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9_./@+~-]*")


#: the programs installed on each host and account: (name prefix, module)
_PROGRAMS = (("elf", elf_module), ("agent", hostagent), ("resident", resident_module))


@functools.cache
def _sources() -> tuple[tuple[bytes, ...], str]:
    texts = tuple(Path(module.__file__).read_bytes() for _, module in _PROGRAMS)
    return texts, hashlib.sha256(b"\0".join(texts)).hexdigest()[:12]


def version() -> str:
    """The version of the programs this broker installs (the elf, the host agent, the resident agent)."""
    return _sources()[1]


class Endpoint:
    """A host reached as one account: runs agent commands there and maps work directories onto it."""

    def __init__(self, host: Host, account: Account, shell: Shell, *, local_root: str | None = None,
                 command_timeout: float = 60.0):
        """``local_root``: the engine's work directory root, whose attempt paths map under the remote root."""
        self.host, self.account, self.shell = host, account, shell
        self.label = account.label
        self._local_root = local_root.rstrip("/") if local_root else None
        self._timeout = command_timeout
        self._lock = threading.Lock()
        self._root: str | None = None
        #: how many times this endpoint uploaded the elf (tests: once per host, account and version)
        self.installs = 0
        self._relay: Any = None
        self._relay_refused = False
        #: called with each event of the relay (an attempt ended, an agent went): the launcher looks at once
        self.on_relay_event: Any = None
        #: relays opened so far (tests: one per endpoint unless one failed)
        self.relays = 0
        self._relay_lock = threading.Lock()

    # --------------------------------------------------------------------------------------- install

    def ensure(self) -> str:
        """Create the private work root (0700) and install the elf and agent if missing; returns the root."""
        with self._lock:
            if self._root is not None:
                return self._root
            texts, ver = _sources()
            wanted = shlex.quote(work_root(self.host, self.account))
            present = " && ".join(f"test -f .broker/{name}-{ver}.py" for name, _ in _PROGRAMS)
            script = (f"umask 077 && mkdir -p {wanted}/.broker && chmod 700 {wanted} && cd {wanted} && pwd -P && "
                      f"if {present}; then echo present; else echo missing; fi")
            done = self.shell.run(script, timeout=self._timeout)
            lines = done.out.split()
            if done.returncode != 0 or len(lines) != 2:
                raise ResourceError(f"{self.label}: cannot prepare the work root {wanted}: "
                                    f"{done.err or 'exit code %d' % done.returncode}", retryable=False)
            root = lines[0]
            if not SAFE_PATH_RE.fullmatch(root):
                raise ResourceError(f"{self.label}: work root {root!r} has characters the broker does not "
                                    "put in commands", retryable=False)
            if lines[1] == "missing":
                for (name, _), text in zip(_PROGRAMS, texts):
                    self.shell.put(f"{root}/.broker/{name}-{ver}.py", text, 0o700)
                self.installs += 1
                log.info("installed the elf %s on %s in %s/.broker", ver, self.label, root)
            self._root = root
            return root

    @property
    def elf_path(self) -> str:
        """The installed elf (after :meth:`ensure`)."""
        return f"{self.ensure()}/.broker/elf-{version()}.py"

    @property
    def agent_path(self) -> str:
        """The installed agent (after :meth:`ensure`)."""
        return f"{self.ensure()}/.broker/agent-{version()}.py"

    @property
    def resident(self) -> dict[str, str]:
        """The resident agent of this account here: its installed program and its directory (socket, journal),
        one per version: an agent of an earlier broker finishes its payloads beside the new one's."""
        base = f"{self.ensure()}/.broker/resident-{version()}"
        return {"program": base + ".py", "dir": base}

    # ------------------------------------------------------------------------------------- workdirs

    def workdir(self, path: str) -> str:
        """The remote work directory for an engine attempt directory (or an already remote one)."""
        root = self.ensure()
        if path == root or path.startswith(root + "/"):
            remote = path
        else:
            relative = None
            if self._local_root and path.startswith(self._local_root + "/"):
                relative = path[len(self._local_root) + 1:]
            if relative is None:
                raise ResourceError(f"{self.label}: work directory {path} is neither under the engine's work "
                                    f"root {self._local_root} nor under {root}", retryable=False)
            remote = posixpath.join(root, relative)
        if not SAFE_PATH_RE.fullmatch(remote) or ".." in remote.split("/"):
            raise ResourceError(f"{self.label}: unsafe work directory {remote!r}", retryable=False)
        return remote

    def local_path(self, remote: str) -> str | None:
        """The engine-side attempt directory of a remote work directory (None without a local root)."""
        root = self.ensure()
        if self._local_root is None or not remote.startswith(root + "/"):
            return None
        return posixpath.join(self._local_root, remote[len(root) + 1:])

    def tail(self, workdir: str, name: str, max_bytes: int) -> bytes | None:
        """The last ``max_bytes`` of file ``name`` (stdout, stderr) of an attempt's work directory here, None when
        it is not a regular file (absent, or a symbolic link: the payload owns its directory and must not make
        the broker show another file) or the host does not answer within 10 s. Read as the owner's account."""
        if name not in ("stdout", "stderr"):
            raise ValueError(f"not an attempt's stream: {name!r}")
        path = shlex.quote(posixpath.join(self.workdir(workdir), name))
        try:
            done = self.shell.run(f"[ -f {path} ] && [ ! -L {path} ] && exec tail -c {int(max_bytes)} -- {path}",
                                  timeout=10.0)
        except ShellError:
            return None
        return done.stdout[-max_bytes:] if done.returncode == 0 else None

    def remove_workflow(self, global_id: str) -> bool:
        """Remove ``<work root>/<global id>`` (a deleted workflow's directories here); True when it existed.

        Never installs anything: a host where the work root does not exist has nothing to remove.
        """
        if not GLOBAL_ID_RE.fullmatch(global_id):
            raise ValueError(f"not a workflow global id: {global_id!r}")
        wanted = shlex.quote(work_root(self.host, self.account))
        script = (f"cd {wanted} 2>/dev/null || exit 0; "
                  f"if test -d {global_id} && ! test -L {global_id}; then rm -rf -- {global_id} && echo removed; fi")
        done = self.shell.run(script, timeout=self._timeout)
        if done.returncode != 0:
            raise ResourceError(f"{self.label}: cannot remove {global_id}: "
                                f"{done.err.strip() or 'exit code %d' % done.returncode}")
        return done.out.strip() == "removed"

    # -------------------------------------------------------------------------------------- staging

    def push_inputs(self, local_dir: str, remote_dir: str, max_bytes: int) -> int:
        """Upload the files staged into the engine's attempt directory to the remote one; returns how many.

        Regular files only (symlinks are skipped), each at most ``max_bytes``. Nothing to do (0) when the
        local directory does not exist, which is the case for nodes without stage-in.
        """
        if not os.path.isdir(local_dir):
            return 0
        files = []
        for dirpath, dirnames, filenames in os.walk(local_dir):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path) and not os.path.islink(path) and not name.endswith(".partial"):
                    files.append(os.path.relpath(path, local_dir))
        if not files:
            return 0
        targets = [posixpath.join(remote_dir, rel) for rel in files]
        folders = sorted({posixpath.dirname(t) for t in targets})
        done = self.shell.run("umask 077 && mkdir -p " + " ".join(shlex.quote(f) for f in folders))
        if done.returncode != 0:
            raise ResourceError(f"{self.label}: cannot create {remote_dir}: {done.err}")
        for rel, target in zip(files, targets):
            self.shell.upload(os.path.join(local_dir, rel), target, max_bytes)
        return len(files)

    def fetch_outputs(self, remote_dir: str, relatives: list[str], local_dir: str, max_bytes: int) -> int:
        """Download files of a remote work directory into the engine's attempt directory (for stage-out)."""
        from broker.transfers import inside_workdir

        os.makedirs(local_dir, mode=0o700, exist_ok=True)
        for rel in relatives:
            target = inside_workdir(Path(local_dir), rel)  # refuses absolute paths, '..', symlinks out
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.shell.download(posixpath.join(remote_dir, rel), str(target), max_bytes)
        return len(relatives)

    # ---------------------------------------------------------------------------------------- agent

    def agent(self, command: str, request: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Run one agent command with ``request`` on stdin; its JSON reply (ResourceError on failure)."""
        line = self.agent_command(command)
        data = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        done = self.shell.run(line, stdin=data, timeout=timeout or self._timeout)
        return self.reply(command, done)

    def start(self, request: dict[str, Any]) -> dict[str, Any]:
        """The agent's ``start`` of one attempt, through the relay when the shell can keep one open.

        The relay is the host agent's ``relay`` command kept running on a channel of its own (one channel
        slot): a launch then starts no process on the host but the payload. Any failure of it is answered by
        the same request as one command: ``start`` is idempotent (the launch record is created exclusively,
        so a start the relay did make answers "exists", and the launcher adopts it), and a host whose Python
        is missing gets its clear message from the command.
        """
        reply = self._through_relay("start", request, open_one=True)
        return self.agent("start", request) if reply is None else self._checked("start", reply)

    def _through_relay(self, command: str, request: dict[str, Any], *, open_one: bool) -> dict[str, Any] | None:
        """The relay's answer to agent ``command`` with ``request``; None when there is no relay (``open_one``:
        opened if the shell can keep one) or it failed: the caller then runs the command."""
        open_stream = getattr(self.shell, "stream", None)
        if open_stream is None or self._relay_refused:
            return None
        try:
            with self._relay_lock:
                if self._relay is None or self._relay.closed:
                    if not open_one:
                        return None
                    self._relay = open_stream(self.agent_command("relay"), self._relay_event)
                    self.relays += 1
                relay = self._relay
            return relay.request(dict(request, op=command))
        except ShellError as exc:
            log.info("%s: the relay failed (%s): the %s goes as one command", self.label, exc, command)
            if not exc.retryable:
                self._relay_refused = True  # it cannot be opened here: commands from now on
            return None

    def _relay_event(self, event: dict[str, Any]) -> None:
        if self.on_relay_event is not None:
            self.on_relay_event(event)

    def close(self) -> None:
        """Close the relay, if one is open (its command ends with its input); payloads run on."""
        with self._relay_lock:
            if self._relay is not None:
                self._relay.close()
                self._relay = None

    def probe(self, tracked: Sequence[Any], max_output_bytes: int, scan: bool = True) -> list[dict[str, Any]]:
        """The agent's look at the work directories of tracked attempts (status, elf alive, new reports)."""
        items = [[t.handle.workdir, t.handle.attempt, t.session, t.scan_offset if scan else None] for t in tracked]
        request = {"elf": self.elf_path, "max_value_bytes": max_output_bytes, "items": items}
        # through the relay once a launch opened it: no process start here either (read-only: safe to repeat)
        reply = self._through_relay("probe", request, open_one=False)
        if reply is not None and isinstance(reply.get("items"), list):
            return reply["items"]
        return self.agent("probe", request)["items"]

    def reply(self, command: str, done: Completed) -> dict[str, Any]:
        """The agent's JSON reply from a finished command (ResourceError for an error or no reply).

        A reply that says "exists" (the attempt was prepared before) is returned, not raised.
        """
        if done.returncode == 127:
            raise ResourceError(f"{self.label}: {self.host.python} not found (set <python> in the host "
                                f"catalogue): {done.err}", retryable=False)
        try:
            reply = json.loads(done.stdout.partition(b"\n")[0])
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ShellError(f"{self.label}: agent {command} failed (exit code {done.returncode}): "
                             f"{done.err or done.out[:200]!r}", ambiguous=command == "start")
        return self._checked(command, reply)

    def _checked(self, command: str, reply: dict[str, Any]) -> dict[str, Any]:
        """An agent's reply (from a command or the relay), raised as ResourceError when it says an error;
        one that says "exists" (the attempt was prepared or started before) is returned."""
        if reply.get("error") == "exists" or "exists" in reply.get("items", ()):
            return reply
        if isinstance(reply.get("error"), str):
            raise ResourceError(f"{self.label}: agent {command}: {reply['error']}")
        return reply

    def agent_command(self, command: str) -> str:
        """The command line that runs agent ``command`` (its request goes on stdin)."""
        return f"{shlex.quote(self.host.python)} -I -S {shlex.quote(self.agent_path)} {command}"


__all__ = ["Endpoint", "SAFE_PATH_RE", "version"]
