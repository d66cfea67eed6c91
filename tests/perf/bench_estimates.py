"""Benchmark of completion estimates: replay recorded run histories and measure how far the estimates were.

    python tests/perf/bench_estimates.py [--tiny] [--generate]

The histories (tests/perf/data/estimate-histories.json, checked in, about 100 KB) are runs of six workflow
shapes, generated once by ``--generate`` with a fixed seed: a chain of four different steps, a fan of 40
members on 8 slots, three layers of ten, a sweep whose members run two steps on 6 slots, ten independent
long-tailed nodes, and a sweep that expands only when its parent has ended. Each run has its own pace (a
machine busier or quieter than usual, log-normal, sigma 0.2) on top of every node's own spread.

For every run after the third, at 25%, 50% and 75% of its real duration, the state the broker would see
(ended nodes with their durations, running ones with the time they have run, the rest waiting; the earlier
runs of the same workflow as history, at most 20) goes to :func:`broker.estimates.estimate_remaining`, and
its median end is compared with the run's real end: error = |estimated end - real end| / real duration.
The baseline is ``broker run``'s former ETA, from the current run's rate only (remaining nodes / nodes per
second so far). Printed: the median absolute error of each at each point, and how often the real end fell
inside the p10-p90 interval. Target: under 25% at 50%. Exit 1 only when a result is malformed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `broker` importable from the checkout
    sys.path.insert(0, str(REPO))

from broker.estimates import History, Task, estimate_remaining, observed_slots, run_sigma  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "estimate-histories.json"
POINTS = (0.25, 0.5, 0.75)
#: runs of each shape, and the past runs an estimate may read (as broker.persistence.estimates.PAST_RUNS)
RUNS, PAST = 9, 20
TARGET = 0.25


# --------------------------------------------------------------------------------------------- generate

def _shapes() -> dict[str, tuple[list[tuple[str, str, list[str], float, float]], int | None]]:
    """name -> (nodes as (key, template, deps, median s, log-sigma), slots)."""
    chain = [("a", "a", [], 30, 0.3), ("b", "b", ["a"], 120, 0.3), ("c", "c", ["b"], 15, 0.5),
             ("d", "d", ["c"], 60, 0.3)]
    fan = [("prep", "prep", [], 20, 0.2)] + [(f"s[{i}]/x", "s/x", ["prep"], 60, 0.4) for i in range(40)] + \
        [("join", "join", [f"s[{i}]/x" for i in range(40)], 10, 0.2)]
    layers = [(f"l{j}n{i}", f"l{j}n{i}", [f"l{j - 1}n{k}" for k in range(10)] if j else [], 30, 0.3)
              for j in range(3) for i in range(10)]
    body = [("prep", "prep", [], 10, 0.2)]
    for i in range(20):
        body += [(f"m[{i}]/a", "m/a", ["prep"], 40, 0.3), (f"m[{i}]/b", "m/b", [f"m[{i}]/a"], 20, 0.5)]
    body += [("report", "report", [f"m[{i}]/b" for i in range(20)], 15, 0.2)]
    tail = [(f"t{i}", "t", [], 50, 0.8) for i in range(10)]
    late = [("list", "list", [], 90, 0.3)] + [(f"late[{i}]/run", "late/run", ["list"], 25, 0.3)
                                             for i in range(12)]
    return {"chain": (chain, None), "fan": (fan, 8), "layers": (layers, 4), "members": (body, 6),
            "tail": (tail, None), "late-sweep": (late, 3)}


def _run(nodes: list, slots: int | None, rng: random.Random) -> list[dict]:
    """One run: list scheduling on ``slots`` slots with the run's pace and each node's own spread."""
    pace = rng.lognormvariate(0, 0.2)
    duration = {k: round(m * pace * rng.lognormvariate(0, s), 1) for k, _, _, m, s in nodes}
    deps = {k: d for k, _, d, _, _ in nodes}
    end: dict[str, float] = {}
    start: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    now = 0.0
    while len(end) < len(nodes):
        ready = [k for k, *_ in nodes if k not in start and all(d in end for d in deps[k])]
        for k in ready[: (slots - len(running)) if slots else None]:
            start[k] = now
            running.append((now + duration[k], k))
        running.sort()
        now, k = running.pop(0)
        end[k] = now
    return [{"key": k, "template": t, "deps": deps[k], "start": round(start[k], 1), "end": round(end[k], 1)}
            for k, t, *_ in nodes]


def generate() -> dict:
    rng = random.Random(20261206)
    return {"generated": "2026-12-06", "shapes": {
        name: {"slots": slots, "runs": [_run(nodes, slots, rng) for _ in range(RUNS)]}
        for name, (nodes, slots) in _shapes().items()}}


# ----------------------------------------------------------------------------------------------- replay

def state_at(run: list[dict], now: float) -> list[Task]:
    """What the broker sees of a run ``now`` seconds in: a sweep whose parents have not all ended is not
    expanded yet, so its members are one waiting sweep task."""
    index = {r["key"]: i for i, r in enumerate(run)}
    ended = {r["key"] for r in run if r["end"] <= now}
    pending: dict[str, list[dict]] = {}
    for r in run:
        if "[" in r["key"]:
            prefix = r["key"].split("[", 1)[0]
            outside = [d for d in r["deps"] if not d.startswith(prefix + "[")]
            if not all(d in ended for d in outside):
                pending.setdefault(prefix, []).append(r)
    sweep_key = {prefix: len(run) + i for i, prefix in enumerate(pending)}
    collapsed = {r["key"]: sweep_key[p] for p, rows in pending.items() for r in rows}

    def dep_keys(deps: list[str]) -> tuple[int, ...]:
        return tuple(dict.fromkeys(collapsed.get(d, index[d]) for d in deps))

    tasks = []
    for r in run:
        if r["key"] in collapsed:
            continue
        if r["key"] in ended:
            state, elapsed = "done", r["end"] - r["start"]
        elif r["start"] <= now:
            state, elapsed = "running", now - r["start"]
        else:
            state, elapsed = "waiting", 0.0
        tasks.append(Task(index[r["key"]], r["template"], state, elapsed, None, dep_keys(r["deps"])))
    for prefix, rows in pending.items():
        outside = {d for r in rows for d in r["deps"] if not d.startswith(prefix + "[")}
        tasks.append(Task(sweep_key[prefix], prefix, "waiting", deps=dep_keys(sorted(outside)), sweep=True))
    return tasks


def history_of(runs: list[list[dict]]) -> History:
    durations: dict[str, list[float]] = {}
    for run in runs[-PAST:]:
        for r in run:
            durations.setdefault(r["template"], []).append(r["end"] - r["start"])
    medians = {t: statistics.median(ds) for t, ds in durations.items()}
    per_run: list[dict[str, list[float]]] = []
    for run in runs[-PAST:]:
        own: dict[str, list[float]] = {}
        for r in run:
            own.setdefault(r["template"], []).append(r["end"] - r["start"])
        per_run.append(own)
    counts = {t: statistics.median(len(run.get(t, ())) for run in per_run) for t in durations}
    return History(durations, run_sigma(per_run, medians), counts)


def replay(data: dict, tiny: bool) -> dict[float, tuple[list[float], list[float], list[bool]]]:
    out: dict[float, tuple[list[float], list[float], list[bool]]] = {p: ([], [], []) for p in POINTS}
    for shape in data["shapes"].values():
        runs = shape["runs"]
        for i in range(3, 5 if tiny else len(runs)):
            run, history = runs[i], history_of(runs[:i])
            total = max(r["end"] for r in run)
            for point in POINTS:
                now = point * total
                tasks = state_at(run, now)
                in_flight = sum(1 for t in tasks if t.state == "running")
                done_keys = {t.key for t in tasks if t.state == "done"}
                ready = sum(1 for t in tasks if t.state == "waiting" and all(d in done_keys for d in t.deps))
                slots = shape["slots"] or observed_slots(in_flight, ready)
                est = estimate_remaining(tasks, history, slots=slots)
                if est is None or not est.p10 <= est.p50 <= est.p90:
                    raise SystemExit(f"malformed estimate {est} at {point:.0%} of a run")
                errors, base, inside = out[point]
                errors.append(abs(now + est.p50 - total) / total)
                inside.append(now + est.p10 <= total <= now + est.p90)
                done = len(done_keys)
                # the former ETA: nodes left at this run's rate so far (nothing done yet: no ETA, counted 100%)
                base.append(abs(now * (len(run) - done) / done + now - total) / total if done else 1.0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="two runs per shape (CI)")
    parser.add_argument("--generate", action="store_true", help=f"write {DATA.name} again (fixed seed)")
    args = parser.parse_args()
    if args.generate:
        DATA.parent.mkdir(exist_ok=True)
        DATA.write_text(json.dumps(generate(), separators=(",", ":")) + "\n")
    data = json.loads(DATA.read_text())
    results = replay(data, args.tiny)
    runs = len(results[POINTS[0]][0])
    print(f"bench_estimates {date.today()} | {len(data['shapes'])} workflow shapes, {runs} replayed runs")
    print(f"{'point':<8}{'median |error|':>16}{'baseline (rate only)':>22}{'ratio':>8}{'in p10-p90':>12}")
    summary = {}
    for point, (errors, base, inside) in results.items():
        e, b = statistics.median(errors), statistics.median(base)
        print(f"{point:<8.0%}{e:>15.1%}{b:>22.1%}{(e / b if b else 0):>7.2f}x{sum(inside) / len(inside):>12.0%}")
        summary[f"{point:.2f}"] = {"error": e, "baseline": b, "coverage": sum(inside) / len(inside)}
    met = summary["0.50"]["error"] < TARGET
    print(f"target: median |error| under {TARGET:.0%} at 50% of a run: {'met' if met else 'MISSED'}")
    members = 3_000 if args.tiny else 30_000
    took, sort = cost(members)
    print(f"one estimate of a {members:,}-member sweep half done (its tasks in memory, the reads not counted): "
          f"{took * 1000:.0f} ms; baseline, sorting its durations once: {sort * 1000:.1f} ms ({took / sort:.0f}x)")
    summary["cost_ms"] = took * 1000
    print(json.dumps(summary))
    return 0


def cost(members: int) -> tuple[float, float]:
    """Seconds of one estimate of a sweep of ``members`` (a body node each) half done, and of the baseline."""
    tasks = [Task(i, "s/n", "done", 10.0 + i % 7) for i in range(members)]
    tasks += [Task(members + i, "s/n", "waiting") for i in range(members)]
    history = History({"s/n": [10.0] * 50})
    started = time.perf_counter()
    estimate_remaining(tasks, history, slots=4)
    took = time.perf_counter() - started
    started = time.perf_counter()
    sorted(t.elapsed for t in tasks)
    return took, time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
