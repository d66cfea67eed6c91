"""Benchmark: how long one user's big submission holds up another user's running workflow.

Every change of state goes through the one writer, and a submission is stored by it: while it stores and
tracks a big workflow, every other user's node ends and starts wait. An engine in process (SQLite, shipped
settings) runs alice's chain of 150 short nodes (``sleep 0.02``); once it runs, bob submits a workflow of N
independent nodes waiting for a gate node (stored and tracked, none started). Printed: the largest gap
between two of alice's consecutive node events alone (the baseline, same run) and while bob's submission
is stored, and how long bob's call took.

Exit status 1 means a wrong result (a workflow that did not succeed, rows missing), never a slow one.

    PYTHONPATH=. python tests/perf/bench_stall.py [--tiny] [--nodes N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from broker.persistence import migrate  # noqa: E402
from broker.persistence.models import Event, Node  # noqa: E402
from broker.states import WorkflowState  # noqa: E402
from tests.engine.helpers import Broker, workflow  # noqa: E402
from tests.fixtures import wait_for  # noqa: E402

CHAIN = 150


def chain() -> bytes:
    return workflow("".join(f'<node id="c{i}">' + (f'<dependsOn node="c{i - 1}"/>' if i else "")
                            + '<payload type="sh">sleep 0.02</payload></node>' for i in range(CHAIN)), name="chain")


def largest_gap(broker: Broker, workflow_id: int, since: float = 0.0, until: float = float("inf")) -> float:
    """The largest gap (s) between two consecutive node-state events of the workflow, within [since, until]."""
    with broker.sessions() as s:
        times = [t.timestamp() for t in s.scalars(select(Event.time).where(
            Event.workflow_id == workflow_id, Event.type == "NODE_STATE").order_by(Event.id))]
    times = [t for t in times if since <= t <= until]
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a quick run (CI): 10,000 nodes")
    parser.add_argument("--nodes", type=int, default=100_000, help="nodes in bob's workflow")
    args = parser.parse_args()
    nodes = 10_000 if args.tiny else args.nodes
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as scratch:
        tmp = Path(scratch)
        url = f"sqlite:///{tmp / 'broker.db'}"
        migrate.upgrade(url)
        broker = Broker(url, tmp).start()
        gate = tmp / "gate"
        try:
            alone = broker.submit(chain())
            if broker.wait(alone, deadline=600) is not WorkflowState.SUCCEEDED:
                print("WRONG: alice's chain alone did not succeed")
                return 1
            baseline = largest_gap(broker, alone)
            big = workflow(f'<node id="gate"><payload type="sh">while [ ! -e {gate} ]; do sleep 0.1; done</payload>'
                           '</node>' + "".join(f'<node id="n{i}"><dependsOn node="gate"/><payload type="sh">true'
                                               '</payload></node>' for i in range(nodes)), name="big")
            during = broker.submit(chain())
            wait_for(lambda: largest_gap(broker, during) > 0.0, what="alice's chain to run", error=SystemExit)
            got: list[int] = []
            started = time.time()
            bob = threading.Thread(target=lambda: got.append(broker.submit(big, owner="bob")))
            bob.start()
            bob.join()
            submitted = time.time() - started
            if broker.wait(during, deadline=600) is not WorkflowState.SUCCEEDED:
                print("WRONG: alice's chain did not succeed")
                return 1
            stall = largest_gap(broker, during, since=started - 1.0)
            with broker.sessions() as s:
                stored = s.scalar(select(func.count()).select_from(Node).where(Node.workflow_id == got[0]))
            if stored != nodes + 1:
                print(f"WRONG: bob's workflow has {stored} nodes stored, not {nodes + 1}")
                return 1
        finally:
            broker.stop()
            gate.touch()  # (after the stop: 100,000 starts are not what is measured)
    print(f"\nbench_stall{' --tiny' if args.tiny else ''} ({date.today()}): alice's chain of {CHAIN} nodes, "
          f"bob submits {nodes:,} nodes")
    print(f"{'measure':52} {'figure':>10} {'baseline':>10}")
    print(f"{'largest gap between two of alice node events, s':52} {stall:10.2f} {baseline:10.2f}")
    print(f"{'bob submit call, s':52} {submitted:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
