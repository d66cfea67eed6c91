"""Benchmark: memory of ``broker serve`` across big submissions (issue: "memory returns after big work").

A real ``broker serve`` (SQLite, shipped settings). Ten times in a row: submit a workflow of N independent
nodes (100,000 by default) through the API, cancel it, wait until it is cancelled, delete it (admin API).
The server's anonymous memory (``RssAnon`` of /proc/PID/status: SQLite's memory map of the database file
counts in RSS, not here) is sampled every 20 ms throughout; printed: its value before the first submission,
after each cycle, and the peak; and the server's CPU time over the cycles (to compare allocators: run with
PYTHONMALLOC=pymalloc in the environment for CPython's own, which the server then keeps).

Targets: after the tenth cycle within 150 MB of its value after the first; peak under 1 GB.

    PYTHONPATH=. python tests/perf/bench_memory.py [--tiny] [--nodes N] [--cycles C]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.api.helpers import Server, add_users  # noqa: E402

MB = 1024**2
TARGET_GROWTH_MB, TARGET_PEAK_MB = 150, 1024


def rss_anon(pid: int) -> int:
    """Bytes of anonymous resident memory of process ``pid``."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/PID/status")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """The peak of RssAnon, sampled every 20 ms in a thread."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_anon(self.pid))
            except OSError:
                return
            self.stop.wait(0.02)


def description(nodes: int, cycle: int) -> str:
    body = "".join(f'<node id="n{i}"><payload type="sh">true</payload></node>' for i in range(nodes))
    return f'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="big-{cycle}">{body}</workflow>'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few seconds: CI's smoke run")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--cycles", type=int, default=10)
    args = parser.parse_args()
    nodes, cycles = (2_000, 3) if args.tiny else (args.nodes, args.cycles)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        tmp = Path(scratch)
        url = f"sqlite:///{tmp / 'broker.db'}"
        from broker.persistence import migrate

        migrate.upgrade(url)
        add_users(url)
        server = Server(url, tmp, {"BROKER_LOGGING_LEVEL": "WARNING"}).start()
        pid = server.process.pid
        sampler = Sampler(pid)
        after: list[int] = []
        wrong = 0
        try:
            core, admin = server.core(), server.admin()
            core.getStatusInfo(0)
            admin.getServiceState()
            before, cpu_before = rss_anon(pid), cpu_seconds(pid)
            for cycle in range(cycles):
                text = description(nodes, cycle)
                times = [time.perf_counter()]
                handle = core.submit({"workflowContent": text})
                del text
                times.append(time.perf_counter())
                admin.cancel(handle.globalId)
                state = server.wait_state(handle.id, "cancelled", "failed", "succeeded")
                times.append(time.perf_counter())
                admin.delete(handle.globalId)
                times.append(time.perf_counter())
                wrong += state != "cancelled"
                after.append(rss_anon(pid))
                cpu = cpu_seconds(pid)
                steps = " / ".join(f"{b - a:.1f}" for a, b in zip(times, times[1:]))
                print(f"cycle {cycle + 1}: submit / cancel / delete {steps} s, RssAnon {after[-1] / MB:.0f} MB, "
                      f"peak so far {sampler.peak / MB:.0f} MB", flush=True)
        except Exception:
            print(server.log_text()[-5000:])
            raise
        finally:
            sampler.stop.set()
            sampler.thread.join()
            server.stop(expect=None)
            server.close()
    growth = (after[-1] - after[0]) / MB
    rows = [
        ("RssAnon before the first submission MB", f"{before / MB:.0f}", "", None),
        ("RssAnon after the first cycle MB", f"{after[0] / MB:.0f}", "", None),
        (f"RssAnon after cycle {cycles} MB", f"{after[-1] / MB:.0f}", "", None),
        ("growth from the first cycle to the last MB", f"{growth:+.0f}", f"< {TARGET_GROWTH_MB}",
         growth < TARGET_GROWTH_MB),
        ("peak RssAnon MB", f"{sampler.peak / MB:.0f}", f"< {TARGET_PEAK_MB}", sampler.peak / MB < TARGET_PEAK_MB),
        ("server CPU (user + system) over the cycles s", f"{cpu - cpu_before:.0f}", "", None),
    ]
    print(f"\nbench_memory{' --tiny' if args.tiny else ''}: {cycles} cycles of {nodes:,} nodes "
          "(submit, cancel, delete)")
    print(f"{'measure':50} {'result':>10} {'target':>10}  verdict")
    for name, value, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "MISS")
        print(f"{name:50} {value:>10} {target:>10}  {verdict}")
    if wrong:
        print(f"WRONG: {wrong} workflows did not end cancelled")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
