"""The plain baseline of tests/perf/bench_engine.py: a DAG run by a thread pool of 4 with subprocess.run.

Run as a script (``python baseline_pool.py DIR``: ``DIR/dag.json`` maps each node to its parents, ``DIR/payload``
is the payload every node runs under bash), it is issue 18's baseline: a Python process of its own that pays
an interpreter's start and one bash per node, as `broker run` does; it imports nothing else, so that its
start-up is a bare interpreter's. Imported, :func:`baseline` is the floor the benchmark prints beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SLOTS = 4


def baseline(dag: dict[str, list[str]], argv: tuple[str, ...] = ("true",)) -> float:
    """Run the DAG with a thread pool of 4 and subprocess.run of ``argv`` per node: the plain way, no
    persistence."""
    started = time.perf_counter()
    waiting = {n: set(d) for n, d in dag.items()}
    children: dict[str, list[str]] = {n: [] for n in dag}
    for n, deps in dag.items():
        for d in deps:
            children[d].append(n)
    lock, done = threading.Lock(), threading.Event()
    left = [len(dag)]
    pool = ThreadPoolExecutor(SLOTS)

    def run(node: str) -> None:
        subprocess.run(argv, check=True)
        ready = []
        with lock:
            left[0] -= 1
            for child in children[node]:
                waiting[child].discard(node)
                if not waiting[child]:
                    ready.append(child)
            if not left[0]:
                done.set()
        for child in ready:
            pool.submit(run, child)

    for node in [n for n, d in waiting.items() if not d]:
        pool.submit(run, node)
    done.wait()
    pool.shutdown()
    return time.perf_counter() - started


if __name__ == "__main__":
    where = sys.argv[1]
    with open(f"{where}/dag.json") as dag_file:
        baseline(json.load(dag_file), ("bash", f"{where}/payload"))
