"""Benchmark: payloads on an SSH host under an elf each, and under the account's resident agent (issue 18).

    python tests/perf/bench_ssh.py [--tiny] [--nodes 200] [--parallel 8] [--rounds 3]

Runs against the test sshd (tests/services/sshd.sh) as the non-root test account, as the SSH launcher tests
do: the broker and the "remote" host are this machine, so the machine's CPU covers both sides. Measured,
in rounds interleaved (elf, agent, baseline, elf, ...), the median round of each printed:

* **elf**: N trivial nodes (``echo`` of one output) launched from ``--parallel`` threads (the engine's launch
  workers) through :class:`broker.launchers.ssh.SshLauncher`, watched and collected: nodes/s from the first
  launch to the last result;
* **agent**: the same with ``resident=True`` (``[hosts] ssh_agent``): no elf per payload;
* **baseline**: the same N payload texts run as ``sh -c TEXT`` commands over the same pooled connection from
  the same threads: one SSH command per node, nothing written, nothing watched.

* **chain**: C nodes one after the other (each launched once the one before has ended, as a chain of
  dependencies) under each, with the default poll interval (``[hosts] ssh_poll_interval``, 1 s): the time
  from a node's launch to its end reaching the broker, whose median is mostly how soon the broker learns of
  an end (the next poll under the elf; the relay's word under the agent).

Beside the wall time: processes started per node (the kernel's fork counter, ``processes`` in /proc/stat, over
the whole machine: sshd's session, the shell, the host agent, the elf, the payload) and the machine's CPU time
per node (every process: the broker's launcher, sshd, the host side). Exit status: 0 when every result is
right, whatever the timings; 1 otherwise. tests/run runs it with --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `broker` and `tests` importable from the checkout
    sys.path.insert(0, str(REPO))

from broker.launchers import base  # noqa: E402
from broker.launchers.ssh import SshLauncher  # noqa: E402
from broker.resources.sshpool import SshPool  # noqa: E402
from tests.fixtures import wait_for  # noqa: E402
from tests.fixtures.services import Sshd, parse_env, run_script  # noqa: E402
from tests.resources.helpers import Ended, account, endpoint, request, ssh_host, unique_workflow  # noqa: E402

TEXT = 'echo "@broker output n=$WB_N"\n'


class WrongResult(Exception):
    """Raised when a result is wrong: the benchmark then exits 1."""


def machine() -> tuple[int, float]:
    """The kernel's count of processes started since boot, and the CPU seconds spent by every CPU (not idle)."""
    forks, busy = 0, 0.0
    with open("/proc/stat") as handle:
        for line in handle:
            fields = line.split()
            if fields[0] == "cpu":
                # user nice system idle iowait irq softirq steal: all but idle and iowait
                values = [int(v) for v in fields[1:9]]
                busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
            elif fields[0] == "processes":
                forks = int(fields[1])
    return forks, busy


def run_nodes(launcher: SshLauncher, n: int, parallel: int) -> float:
    """Launch, watch and collect n trivial nodes; returns the wall time."""
    workflow = unique_workflow()
    requests = [request(workflow, TEXT, node_id=i, path=f"n{i}", env=(("WB_N", str(i)),)) for i in range(1, n + 1)]
    ended = Ended()
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as workers:
        handles = list(workers.map(launcher.launch, requests))
    for handle in handles:
        launcher.watch(handle, ended)
    wait_for(lambda: ended.count() == n, deadline=600, interval=0.005, what=f"{n} nodes to end", error=WrongResult)
    results = [launcher.collect(h) for h in handles]
    wall = time.perf_counter() - started
    outcomes = Counter(r.outcome for r in results)
    if outcomes != Counter({base.SUCCEEDED: n}) or sorted(r.outputs["n"] for r in results) != list(range(1, n + 1)):
        raise WrongResult(f"outcomes {dict(outcomes)}, outputs {sorted(r.outputs.get('n') for r in results)[:10]}...")
    return wall


def chain(launcher: SshLauncher, n: int) -> float:
    """n nodes one after the other; the median seconds from a launch to its end reaching the launcher."""
    workflow, spans = unique_workflow(), []
    for i in range(1, n + 1):
        ended = Ended()
        started = time.perf_counter()
        handle = launcher.launch(request(workflow, TEXT, node_id=i, path=f"c{i}", env=(("WB_N", str(i)),)))
        launcher.watch(handle, ended)
        wait_for(lambda: ended.has(i), deadline=60, interval=0.001, what=f"chain node {i}", error=WrongResult)
        spans.append(time.perf_counter() - started)
        if launcher.collect(handle).outputs != {"n": i}:
            raise WrongResult(f"chain node {i}: wrong output")
    return sorted(spans)[n // 2]


def baseline(pool: SshPool, host, sshd: Sshd, n: int, parallel: int) -> float:
    """n payload texts as plain commands over the same pooled connection: one SSH command each."""
    shell = pool.shell(host, account(sshd, host))

    def one(i: int) -> str:
        return shell.run(f"WB_N={i} sh -c {shlex.quote(TEXT)}").out.strip()

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as workers:
        outputs = list(workers.map(one, range(1, n + 1)))
    wall = time.perf_counter() - started
    if outputs != [f"@broker output n={i}" for i in range(1, n + 1)]:
        raise WrongResult(f"baseline outputs: {outputs[:3]}...")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a quick run at small sizes (CI)")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chain", type=int, default=20)
    args = parser.parse_args()
    if args.tiny:
        args.nodes, args.rounds, args.chain = 20, 1, 3
    env = dict(os.environ)
    if "BROKER_TEST_SSH_PORT" not in env:
        started = run_script("sshd", "start")
        if started.returncode != 0:
            raise SystemExit(f"tests/services/sshd.sh start failed:\n{started.stderr[-2000:]}")
        env.update(parse_env(run_script("sshd", "env", timeout=30).stdout))
    sshd = Sshd(env["BROKER_TEST_SSH_HOST"], int(env["BROKER_TEST_SSH_PORT"]), env["BROKER_TEST_SSH_USER"],
                env.get("BROKER_TEST_SSH_USER2", ""), Path(env["BROKER_TEST_SSH_KEY"]),
                Path(env["BROKER_TEST_SSH_KNOWN_HOSTS"]))
    scratch = f"broker-bench-{uuid.uuid4().hex[:8]}"
    host = ssh_host(sshd, scratch)
    pool = SshPool(max_channels=args.parallel)
    figures: dict[str, list[tuple[float, float, float]]] = {"elf": [], "agent": [], "baseline": []}
    launchers = {kind: SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.05,
                                   resident=kind == "agent") for kind in ("elf", "agent")}
    try:
        for kind, launcher in launchers.items():  # warm-up: the programs installed, the connection open
            run_nodes(launcher, 2, 2)
        chains = {}
        for kind in ("elf", "agent"):
            with SshLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=1.0,
                             resident=kind == "agent") as slow:
                chains[kind] = chain(slow, args.chain)
        for _ in range(args.rounds):
            for kind in figures:
                forks, cpu = machine()
                if kind == "baseline":
                    wall = baseline(pool, host, sshd, args.nodes, args.parallel)
                else:
                    wall = run_nodes(launchers[kind], args.nodes, args.parallel)
                forks_after, cpu_after = machine()
                figures[kind].append((wall, (forks_after - forks) / args.nodes, (cpu_after - cpu) / args.nodes))
    except WrongResult as exc:
        print(f"bench_ssh: WRONG RESULT: {exc}")
        return 1
    finally:
        for launcher in launchers.values():
            launcher.close()
        pool.close()
        shutil.rmtree(Path(os.path.expanduser(f"~{sshd.user}")) / scratch, ignore_errors=True)
    medians = {kind: sorted(rows)[len(rows) // 2] for kind, rows in figures.items()}
    base_wall = medians["baseline"][0]
    print(f"bench_ssh {date.today()} | {os.cpu_count()} CPUs | {args.nodes} nodes, {args.parallel} at once, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'payloads':<12}{'wall s':>8}{'nodes/s':>9}{'x baseline':>12}{'processes/node':>16}{'CPU ms/node':>13}")
    for kind, (wall, forks, cpu) in medians.items():
        print(f"{kind:<12}{wall:>8.2f}{args.nodes / wall:>9.1f}{wall / base_wall:>12.2f}{forks:>16.1f}"
              f"{cpu * 1000:>13.1f}")
    print(f"chain of {args.chain}, poll every 1 s: launch to end seen, median "
          + ", ".join(f"{kind} {seconds * 1000:.0f} ms" for kind, seconds in chains.items()))
    print(json.dumps({"chain_ms": {kind: seconds * 1000 for kind, seconds in chains.items()},
                      **{kind: {"wall": w, "forks_per_node": f, "cpu_ms_per_node": c * 1000,
                                "spread": [round(r[0], 3) for r in figures[kind]]}
                         for kind, (w, f, c) in medians.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
