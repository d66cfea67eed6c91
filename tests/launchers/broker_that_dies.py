"""A stand-in for a broker process: launches one attempt, prints its handle, then waits to be killed.

Run as ``python -m tests.launchers.broker_that_dies WORKDIR PAYLOAD_TEXT [TIMEOUT]``.
"""

import json
import sys

from broker.launchers.local import LocalLauncher
from tests.launchers.helpers import request


def main() -> None:
    workdir, text = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else None
    launcher = LocalLauncher()
    handle = launcher.launch(request(workdir, text, node_id=7, attempt=2, timeout=timeout))
    print(json.dumps({"job_id": handle.job_id, "started_at": handle.started_at}), flush=True)
    sys.stdin.read()  # until the test kills this process


if __name__ == "__main__":
    main()
