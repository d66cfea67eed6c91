"""Benchmark: nodes per second through the SLURM launcher, next to a plain sbatch loop; scheduler load.

    python tests/perf/bench_slurm.py [--tiny] [--nodes 200] [--queued 1000] [--window 60] [--sweep 1000]

Runs against the test cluster (tests/services/slurm.sh: one node advertising 16 CPUs through
config_overrides, tuned scheduler) and submits over the test sshd as the non-root test account, exactly as
the SLURM launcher tests do. Measured:

* **launcher**: N trivial nodes (``true``) launched from 8 threads (the engine's launch workers), watched
  and collected: nodes/s from the first launch to the last result; then the same N as bundles of 50
  members (``launch_bundle``: one sbatch per 50);
* **ceiling**: ``sbatch --parsable -o /dev/null --wrap true`` N times in a shell loop on the login node
  (same account), until squeue lists none of them: jobs/s;
* **arrays**: a sweep of S members (``--sweep``, 1,000) sent as the engine sends it on a SLURM host, job
  arrays of up to the host's ``maxArraySize`` (1,000: one submission), from the submission to the last
  result, next to an sbatch loop of S one-task jobs measured the same way (target: at least twice its rate)
  and one bare ``sbatch --array`` of S ``true`` tasks (how fast the cluster starts tasks at all);
* **load**: Q jobs held pending (``--begin=now+1hour``) and watched with the default poll interval
  (``[hosts] batch_poll_interval``): scheduler calls (squeue, sacct) and status reads per minute, counted
  by shims on the command directory, and the mean time one poll round takes (status files + squeue).

Exit status: 0 when every result is right (all nodes succeeded with their outputs, one sbatch per job or
bundle, one squeue per poll round), whatever the timings; 1 otherwise. tests/run runs it with --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `broker` and `tests` importable from the checkout
    sys.path.insert(0, str(REPO))

from broker.config import HostsSettings  # noqa: E402
from broker.description.model import Scheduling  # noqa: E402
from broker.launchers import base  # noqa: E402
from broker.launchers.slurm import SlurmLauncher  # noqa: E402
from broker.resources.catalogue import BatchOptions  # noqa: E402
from broker.resources.sshpool import SshPool  # noqa: E402
from tests.fixtures import wait_for  # noqa: E402
from tests.fixtures.services import Sshd, parse_env, run_script  # noqa: E402
from tests.resources.helpers import Ended, account, endpoint, request, ssh_host, unique_workflow  # noqa: E402

COMMANDS = ("sbatch", "squeue", "sacct", "scancel")
BUNDLE = 50


class WrongResult(Exception):
    """Raised when a result is wrong: the benchmark then exits 1."""


def expect(what: str, got, want) -> None:
    if got != want:
        raise WrongResult(f"{what}: got {got}, expected {want}")


def services() -> dict[str, str]:
    """The BROKER_TEST_* variables of sshd and SLURM (started through their scripts when unset)."""
    env = dict(os.environ)
    for name, marker in (("sshd", "BROKER_TEST_SSH_PORT"), ("slurm", "BROKER_TEST_SLURM")):
        if marker not in env:
            started = run_script(name, "start")
            if started.returncode != 0:
                raise SystemExit(f"tests/services/{name}.sh start failed:\n{started.stderr[-2000:]}")
            env.update(parse_env(run_script(name, "env", timeout=30).stdout))
    return env


def shims(directory: Path) -> Path:
    log = directory / "calls.log"
    log.touch()
    log.chmod(0o666)
    for name in COMMANDS:
        real = shutil.which(name)
        (directory / name).write_text(f"#!/bin/sh\necho {name} >> {log}\nexec {real} \"$@\"\n")
        (directory / name).chmod(0o755)
    return log


def counts(log: Path) -> Counter:
    return Counter(log.read_text().split())


def run_nodes(launcher: SlurmLauncher, n: int, bundled: bool, array: bool = False) -> float:
    """Launch, watch and collect n trivial nodes; returns the wall time."""
    workflow = unique_workflow()
    text = 'echo "@broker output n=$WB_N"\n'
    requests = [request(workflow, text, node_id=i, path=f"sweep[{i}]", env=(("WB_N", str(i)),))
                for i in range(1, n + 1)]
    ended = Ended()
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as workers:
        if array:
            # as the engine sends a sweep: arrays of up to the host's maxArraySize members
            size = BatchOptions().max_array
            groups = [requests[i:i + size] for i in range(0, n, size)]
            handles = [h for hs in workers.map(lambda g: launcher.launch_array(g, Scheduling(cores=1)), groups)
                       for h in hs]
        elif bundled:
            groups = [requests[i:i + BUNDLE] for i in range(0, n, BUNDLE)]
            handles = [h for hs in workers.map(lambda g: launcher.launch_bundle(g, Scheduling(cores=1), 8), groups)
                       for h in hs]
        else:
            handles = list(workers.map(launcher.launch, requests))
    for handle in handles:
        launcher.watch(handle, ended)
    wait_for(lambda: ended.count() == n, deadline=600, what=f"{n} nodes to end", error=WrongResult)
    results = [launcher.collect(h) for h in handles]
    wall = time.perf_counter() - started
    expect("outcomes", Counter(r.outcome for r in results), Counter({base.SUCCEEDED: n}))
    expect("outputs", sorted(r.outputs["n"] for r in results), list(range(1, n + 1)))
    return wall


def sbatch_loop(env: dict[str, str], sshd: Sshd, n: int, workdir: str, array: bool = False) -> float:
    """The ceiling: n sbatch calls in a shell loop on the login node, until squeue lists none of them.

    ``array``: one bare ``sbatch --array`` of n ``true`` tasks instead (SLURM's own rate of starting tasks).
    """
    if array:
        script = (f"cd {workdir} && id=$(sbatch --parsable -o /dev/null --array=0-{n - 1} --wrap true); "
                  "while squeue -h -r -j $id -o %i 2>/dev/null | grep -q .; do sleep 0.05; done; "
                  f"echo {n}")
    else:
        script = (f"cd {workdir} && for i in $(seq {n}); do sbatch --parsable -o /dev/null --wrap true; done > ids; "
                  "while squeue -h -j $(paste -sd, ids) -o %i 2>/dev/null | grep -q .; do sleep 0.05; done; "
                  "wc -l < ids")
    ssh = ["ssh", "-i", str(sshd.key), "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=yes", "-p", str(sshd.port), f"{sshd.user}@{sshd.host}", script]
    started = time.perf_counter()
    done = subprocess.run(ssh, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    expect("jobs of the sbatch loop", int(done.stdout.strip()), n)
    return wall


def load(launcher: SlurmLauncher, log: Path, queued: int, window: float) -> dict[str, float]:
    """Scheduler calls per minute while ``queued`` pending jobs are watched."""
    workflow = unique_workflow()
    hold = Scheduling(directives=(("begin", "now+3600"),))
    with ThreadPoolExecutor(8) as workers:
        handles = list(workers.map(lambda i: launcher.launch(request(workflow, "true\n", node_id=i), hold),
                                   range(1, queued + 1)))
    ended = Ended()
    try:
        for handle in handles:
            launcher.watch(handle, ended)
        rounds = launcher.poller.rounds
        wait_for(lambda: launcher.poller.rounds > rounds, deadline=120, what="a first poll of every job",
                 error=WrongResult)
        before, first_round, started = counts(log), launcher.poller.rounds, time.perf_counter()
        probes, busy = launcher.calls["probe"], launcher.poller.seconds
        time.sleep(window)  # the measurement window itself (nothing is awaited)
        elapsed, after, rounds = time.perf_counter() - started, counts(log), launcher.poller.rounds - first_round
        expect("jobs ended while held", ended.count(), 0)
        per_min = 60.0 / elapsed
        figures = {"squeue_per_min": (after["squeue"] - before["squeue"]) * per_min,
                   "sacct_per_min": (after["sacct"] - before["sacct"]) * per_min,
                   "status_reads_per_min": (launcher.calls["probe"] - probes) * per_min,
                   "rounds": rounds, "round_s": (launcher.poller.seconds - busy) / max(rounds, 1)}
        expect("squeue runs per poll round", after["squeue"] - before["squeue"] in (rounds, rounds + 1), True)
        return figures
    finally:
        subprocess.run(["scancel", *[h.job_id for h in handles]], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a quick run at small sizes (CI)")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--sweep", type=int, default=1000, help="members of the sweep sent as job arrays")
    parser.add_argument("--window", type=float, default=60.0, help="seconds the load is measured over")
    args = parser.parse_args()
    if args.tiny:
        args.nodes, args.queued, args.window, args.sweep = 20, 50, 3.0, 50
    env = services()
    sshd = Sshd(env["BROKER_TEST_SSH_HOST"], int(env["BROKER_TEST_SSH_PORT"]), env["BROKER_TEST_SSH_USER"],
                env.get("BROKER_TEST_SSH_USER2", ""), Path(env["BROKER_TEST_SSH_KEY"]),
                Path(env["BROKER_TEST_SSH_KNOWN_HOSTS"]))
    slurm_dir = Path(env["BROKER_TEST_SLURM_WORKDIR"])
    scratch = slurm_dir / f"bench-{uuid.uuid4().hex[:8]}"
    shim_dir = Path(tempfile.mkdtemp(prefix="broker-bench-shims-"))
    shim_dir.chmod(0o755)
    log = shims(shim_dir)
    host = ssh_host(sshd, str(scratch), name="bench", launcher="slurm",
                    batch=BatchOptions(default_queue=env.get("BROKER_TEST_SLURM_PARTITION", "debug"),
                                       directives=("begin",), commands=str(shim_dir)))
    pool = SshPool()
    rows = []
    try:
        fast = SlurmLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=0.2)
        with fast:
            fast.endpoint.ensure()  # the one-off elf installation is not part of the figures
            before = counts(log)
            single = run_nodes(fast, args.nodes, bundled=False)
            expect("sbatch calls (one per node)", counts(log)["sbatch"] - before["sbatch"], args.nodes)
            before = counts(log)
            bundled = run_nodes(fast, args.nodes, bundled=True)
            expect("sbatch calls (one per bundle)", counts(log)["sbatch"] - before["sbatch"], -(-args.nodes // BUNDLE))
            before = counts(log)
            arrays = run_nodes(fast, args.sweep, bundled=False, array=True)
            expect("sbatch calls (one per array of up to 1,000)", counts(log)["sbatch"] - before["sbatch"],
                   -(-args.sweep // BatchOptions().max_array))
        ceiling = sbatch_loop(env, sshd, args.nodes, fast.endpoint.ensure())
        loop = sbatch_loop(env, sshd, args.sweep, fast.endpoint.ensure())
        bare = sbatch_loop(env, sshd, args.sweep, fast.endpoint.ensure(), array=True)
        rows = [("launcher, one job per node", args.nodes, single), (f"launcher, bundles of {BUNDLE}", args.nodes,
                                                                       bundled),
                ("sbatch loop (ceiling)", args.nodes, ceiling),
                ("launcher, sweep as job arrays", args.sweep, arrays), ("sbatch loop, one-task jobs", args.sweep, loop),
                ("bare sbatch --array of true", args.sweep, bare)]
        interval = 0.5 if args.tiny else HostsSettings().batch_poll_interval
        with SlurmLauncher(endpoint(pool, host, account(sshd, host)), poll_interval=interval) as watcher:
            loadfig = load(watcher, log, args.queued, args.window)
    except WrongResult as exc:
        print(f"bench_slurm: WRONG RESULT: {exc}")
        return 1
    finally:
        pool.close()
        shutil.rmtree(shim_dir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"bench_slurm {date.today()} | {os.cpu_count()} CPUs (SLURM node advertises "
          f"{env.get('BROKER_TEST_SLURM_CPUS', '?')}) | Python {platform.python_version()}")
    print(f"{'workload':<30}{'nodes':>7}{'wall s':>9}{'nodes/s':>9}")
    for name, n, wall in rows:
        print(f"{name:<30}{n:>7}{wall:>9.2f}{n / wall:>9.1f}")
    print(f"sweep as job arrays: {args.sweep / arrays:.1f} members/s, {args.sweep / loop:.1f} jobs/s for the sbatch "
          f"loop of one-task jobs: {loop / arrays:.2f}x its rate (target >= 2x)")
    print(f"{args.queued} jobs queued, poll interval {interval:g} s, over {args.window:g} s: "
          f"squeue {loadfig['squeue_per_min']:.1f}/min, sacct {loadfig['sacct_per_min']:.1f}/min, "
          f"status reads {loadfig['status_reads_per_min']:.1f}/min, one poll round {loadfig['round_s']:.2f} s")
    print(json.dumps({"rows": rows, "load": loadfig}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
