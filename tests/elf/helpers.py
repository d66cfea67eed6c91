"""The elf tests' harness: an elf started as a real subprocess on a payload."""

import json
import os
import subprocess
import sys

from broker.elf import ELF_SCRIPT


def start_elf(workdir, payload, *, python=sys.executable, kind="sh", timeout=None, env_pairs=None,
              extra=(), environ=None):
    """``elf.py run`` on ``payload`` (written to ``workdir``) as a process; returns its Popen."""
    os.makedirs(workdir, exist_ok=True)
    (workdir / "payload").write_text(payload)
    args = [python, ELF_SCRIPT, "run", "--workdir", str(workdir), "--payload", "payload", "--type", kind,
            "--attempt", "1", "--session", "wf-test/node", *extra]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if env_pairs is not None:
        (workdir.parent / "env.json").write_text(json.dumps(env_pairs))
        args += ["--env-file", str(workdir.parent / "env.json")]
    return subprocess.Popen(args, env=environ)
