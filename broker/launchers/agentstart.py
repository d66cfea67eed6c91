"""Starting an account's resident local agent (:mod:`broker.elf.agent`) for :mod:`broker.launchers.agentlocal`.

The agent's program goes to a Python on its standard input (``python -I -S - STATE_DIR``), in a session of its
own and as the account; it forks away (its guardian, then the agent), so the process started here ends at
once, after one line: ``ready N`` once the leftovers of a previous agent are swept (N processes killed), or
``busy`` while another agent (or a guardian still sweeping) holds the directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys

from broker.elf import agent as agent_program
from broker.errors import ResourceError
from broker.runas import PATH, RunAs, popen

log = logging.getLogger("broker.launchers.agentlocal")

_SOURCE = open(agent_program.__file__, "rb").read()  # noqa: SIM115 - read once; sent to each agent started


def interpreter(run_as: RunAs | None) -> str:
    """The Python an agent runs on: the broker's own, or for another account the system's (which it reaches;
    the broker's may lie in a directory private to its own account)."""
    if run_as is not None:
        found = shutil.which("python3", path=PATH)
        if found is not None:
            return found
    return os.path.realpath(sys.executable)


def start_agent(directory: str, run_as: RunAs | None) -> None:
    """Start an agent in a session of its own and wait until it has swept its leftovers (or another runs);
    ResourceError with its last line of standard error when it could not start."""
    argv = [interpreter(run_as), "-I", "-S", "-", directory]
    streams = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
               "start_new_session": True, "close_fds": True}
    proc = subprocess.Popen(argv, **streams) if run_as is None else popen(run_as, argv, **streams)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(_SOURCE)
        proc.stdin.close()
    except BrokenPipeError:  # it ended without reading the program: its standard error says why
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    line = proc.stdout.readline(256)
    proc.stdout.close()
    if not line.startswith((b"ready", b"busy")):
        error = proc.stderr.read(4096).decode("utf-8", "replace").strip().splitlines()
        proc.stderr.close()
        proc.wait()
        raise ResourceError(f"the local agent in {directory} did not start: {error[-1] if error else 'no message'}")
    proc.stderr.close()
    proc.wait()  # the agent itself runs on in a process of its own (it forked)
    if line.split()[1:] != [b"0"]:
        log.warning("the local agent in %s killed %s leftover process(es) of a previous agent", directory,
                    line.split()[1].decode())
