"""Recorded scheduler command outputs, and the fake scheduler commands that replay them.

No PBS/Torque or MOAB server can be installed on this machine, so those launchers are tested against
outputs written from the vendors' documentation (``pbs/*.txt``, ``moab/*.txt``; each file names its source).
This is the one place the test suite uses a fake: the scheduler's commands. Everything else (the launcher,
the shell, the host agent, the elf, the job script) runs for real.

A recording file::

    # source: where the output comes from
    # command: the command it answers
    # exit: its exit code
    --- stdout
    ...
    --- stderr
    ...

``{job_id}``-style placeholders are filled in when a test replays a recording (``render``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from broker.resources.shell import Completed

RECORDED = Path(__file__).resolve().parent
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


@dataclass(frozen=True)
class Recording:
    source: str
    command: str
    exit: int
    stdout: str
    stderr: str


def load(system: str, name: str) -> Recording:
    """Recording ``name`` of ``system`` ("pbs" or "moab")."""
    header: dict[str, str] = {}
    sections = {"stdout": [], "stderr": []}
    current = None
    for line in (RECORDED / system / f"{name}.txt").read_text().splitlines(keepends=True):
        if current is None and line.startswith("# "):
            key, _, value = line[2:].partition(":")
            if value:
                header[key.strip()] = value.strip()
            continue
        if line.startswith("--- "):
            current = line[4:].strip()
            continue
        if current is not None:
            sections[current].append(line)
    return Recording(header["source"], header["command"], int(header["exit"]), "".join(sections["stdout"]),
                     "".join(sections["stderr"]))


def render(text: str, subs: dict[str, object]) -> str:
    for key, value in subs.items():
        text = text.replace("{" + key + "}", str(value))
    left = _PLACEHOLDER.findall(text)
    if left:
        raise KeyError(f"recording needs values for {left}")
    return text


def completed(system: str, recording: str, /, **subs: object) -> Completed:
    """A recording as the Completed a shell would return."""
    rec = load(system, recording)
    return Completed(rec.exit, render(rec.stdout, subs).encode(), render(rec.stderr, subs).encode())


_SHIM = '''#!{python}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(__file__)
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(" ".join([name] + sys.argv[1:]) + "\\n")
path = os.path.join(here, "answers", name + ".json")
try:
    with open(path) as handle:
        answers = json.load(handle)
except FileNotFoundError:
    sys.stderr.write("no recorded answer for %s\\n" % name)
    sys.exit(99)
answer = answers[0]
if len(answers) > 1:
    with open(path, "w") as handle:
        json.dump(answers[1:], handle)
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["exit"])
'''


class FakeScheduler:
    """A directory of scheduler commands that log their calls and replay recordings the test chose."""

    def __init__(self, directory: Path, system: str, commands: tuple[str, ...]):
        self.directory = directory
        self.system = system
        (directory / "answers").mkdir(parents=True)
        for command in commands:
            path = directory / command
            path.write_text(_SHIM.format(python=sys.executable))
            path.chmod(0o755)
        (directory / "calls.log").touch()

    def answer(self, command: str, *names: str, **subs: object) -> None:
        """The next calls of ``command`` replay these recordings in turn (the last one from then on)."""
        answers = []
        for name in names:
            rec = load(self.system, name)
            answers.append({"stdout": render(rec.stdout, subs), "stderr": render(rec.stderr, subs),
                            "exit": rec.exit})
        (self.directory / "answers" / f"{command}.json").write_text(json.dumps(answers))

    def calls(self, command: str | None = None) -> list[str]:
        """Every call so far (``name args...``), of one command if given."""
        lines = (self.directory / "calls.log").read_text().splitlines()
        return [line for line in lines if command is None or line.split()[0] == command]


def run_job(job_dir: str) -> int:
    """Play the compute node: run the job's script the way the scheduler would (directives are comments)."""
    import subprocess

    out = open(os.path.join(job_dir, "job.out"), "wb")
    with out:
        return subprocess.run(["/bin/sh", "job.sh"], cwd=job_dir, stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode


__all__ = ["FakeScheduler", "Recording", "completed", "load", "render", "run_job"]
