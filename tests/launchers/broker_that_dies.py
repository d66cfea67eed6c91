"""A stand-in for a broker process: launches one attempt, prints its handle, then waits to be killed.

Run as ``python -m tests.launchers.broker_that_dies WORKDIR PAYLOAD_TEXT [TIMEOUT] [--stop-before-exec]``.
With ``--stop-before-exec`` the forked child stops itself (SIGSTOP) before it executes the wrapper, so this
process stays inside ``launch()`` and prints nothing: the test kills it there, as a broker that died between
the fork and the wrapper's first instruction.
"""

import functools
import json
import os
import signal
import subprocess
import sys

from broker.launchers.local import LocalLauncher
from tests.launchers.helpers import request


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--stop-before-exec"]
    if len(args) < len(sys.argv) - 1:
        stop_self = lambda: os.kill(os.getpid(), signal.SIGSTOP)  # noqa: E731  (runs in the child, before exec)
        subprocess.Popen = functools.partial(subprocess.Popen, preexec_fn=stop_self)  # type: ignore[misc]
    workdir, text = args[0], args[1]
    timeout = float(args[2]) if len(args) > 2 else None
    launcher = LocalLauncher()
    handle = launcher.launch(request(workdir, text, node_id=7, attempt=2, timeout=timeout))
    print(json.dumps({"job_id": handle.job_id, "started_at": handle.started_at}), flush=True)
    sys.stdin.read()  # until the test kills this process


if __name__ == "__main__":
    main()
