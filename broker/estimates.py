"""Completion estimates from history (pure: the reads are :mod:`broker.persistence.estimates`').

A node's duration is predicted from the durations of earlier successful attempts of the same node: the same
workflow name and the same template (its path without sweep indexes), scaled by the *pace* of the current
run (how much faster or slower than its history the nodes of this run that already ended were). A running
node's remaining time is that distribution given the time it has already run (only durations longer than
that are still possible), blended with the rate its own progress reports give. A workflow's remaining time
comes from replaying what is left of its DAG (running nodes first, then the others in dependency order) on
as many slots as it has in flight now; the p10-p90 interval widens with the spread of the history and
narrows as more of the run has ended.

Every figure is in seconds. Nothing here reads a clock: the caller passes the elapsed times.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: z of the 10th/90th percentile of a normal distribution (the interval is log-normal)
Z90 = 1.2816
#: log-spread assumed when a template has fewer past durations than this
MIN_SAMPLES = 3
DEFAULT_SIGMA = 0.35
#: log-spread of one run's pace around its history, assumed when fewer past runs say it
DEFAULT_RUN_SIGMA = 0.25
#: weight (in ended nodes) of the history's pace against the current run's own: the current one wins soon
PRIOR_NODES = 3.0
#: most remaining nodes replayed one by one; beyond, the remaining work is divided by the slots
MAX_REPLAYED = 20_000


@dataclass(frozen=True, slots=True)
class Interval:
    """Remaining seconds: 10th percentile, median, 90th percentile."""

    p10: float
    p50: float
    p90: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.p10 * factor, self.p50 * factor, self.p90 * factor)


@dataclass(frozen=True, slots=True)
class Task:
    """One work-carrying node of the current run, as the estimate sees it."""

    key: int
    template: str
    #: "done", "running" (in flight), "waiting" (not started: waiting, ready, retry_wait) or "instant" (a
    #: group: it ends when what it waits for has ended)
    state: str
    #: done: its duration; running: seconds since its attempt started; waiting: unused
    elapsed: float = 0.0
    #: percent the payload last reported (running)
    progress: float | None = None
    #: keys of the tasks it waits for (among this run's tasks)
    deps: tuple[int, ...] = ()
    #: a parameterized node not expanded yet: it stands for the nodes its members ran in past runs
    sweep: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """Durations of earlier successful attempts, by template, and how each past run's pace varied."""

    #: template -> durations (seconds) of past runs' attempts
    durations: Mapping[str, Sequence[float]]
    #: log-spread of past runs' pace around the history (None: too few runs to say)
    run_sigma: float | None = None
    #: template -> how many nodes of it a past run had (median over runs): what an unexpanded sweep becomes
    counts: Mapping[str, float] = field(default_factory=dict)


#: the largest share of a process's time its estimates may take: the next one waits 1/share times the last
#: one's cost (an estimate of a 200,000-node workflow reads every node: seconds, every few seconds, held the
#: interpreter lock that the engine's threads share)
ESTIMATE_SHARE = 0.05


def next_estimate_at(started: float, finished: float, base: float) -> float:
    """When (on the clock that gave ``started`` and ``finished``) the next estimate of a target may run, the
    last one having run from ``started`` to ``finished``: ``base`` seconds after it at least, and late enough
    that estimates take at most :data:`ESTIMATE_SHARE` of the time."""
    return finished + max(base, (finished - started) / ESTIMATE_SHARE)


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values`` (sorted or not), linear between order statistics."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def log_sigma(values: Sequence[float]) -> float:
    """The log-spread of durations, from their 10th and 90th percentiles (robust to a few outliers)."""
    positive = [v for v in values if v > 0]
    if len(positive) < MIN_SAMPLES:
        return DEFAULT_SIGMA
    return max(0.02, math.log(quantile(positive, 0.9) / quantile(positive, 0.1)) / (2 * Z90))


def run_sigma(runs: Iterable[Mapping[str, Sequence[float]]], medians: Mapping[str, float]) -> float | None:
    """How much past runs' paces spread (log), each run's pace being its median duration / template median."""
    paces = []
    for run in runs:
        ratios = [d / medians[t] for t, ds in run.items() if medians.get(t) for d in ds if d > 0]
        if ratios:
            paces.append(math.log(statistics.median(ratios)))
    if len(paces) < MIN_SAMPLES:
        return None
    return max(0.02, statistics.pstdev(paces))


def pace(tasks: Iterable[Task], medians: Mapping[str, float]) -> tuple[float, int]:
    """(how much slower than its history this run's ended nodes were, how many said so): 1.0 is on time."""
    ratios = [t.elapsed / medians[t.template] for t in tasks
              if t.state == "done" and t.elapsed > 0 and medians.get(t.template)]
    if not ratios:
        return 1.0, 0
    own = math.exp(statistics.median([math.log(r) for r in ratios]))
    weight = len(ratios) / (len(ratios) + PRIOR_NODES)  # a single early node says little
    return math.exp(weight * math.log(own)), len(ratios)


def expected(template: str, history: History, tasks_done: Mapping[str, list[float]], speed: float,
             fallback: float | None) -> tuple[float, float] | None:
    """(median duration, log-spread) of a node of ``template`` in this run, or None when nothing is known."""
    past = history.durations.get(template) or ()
    own = tasks_done.get(template) or []
    if past:
        median = statistics.median(past) * speed
        sigma = log_sigma(past)
        if own:  # this run's own nodes of the template: their median wins as they accumulate
            w = len(own) / (len(own) + PRIOR_NODES)
            median = math.exp((1 - w) * math.log(median) + w * math.log(max(1e-6, statistics.median(own))))
        return median, sigma
    if own:
        return statistics.median(own), log_sigma(own) if len(own) >= MIN_SAMPLES else DEFAULT_SIGMA
    if fallback is not None:
        return fallback, 2 * DEFAULT_SIGMA
    return None


def remaining_of_running(median: float, sigma: float, elapsed: float, progress: float | None) -> Interval:
    """A running node's remaining time: its duration distribution given ``elapsed``, blended with its rate."""
    # log-normal quantiles of the whole duration, conditioned on being longer than elapsed: sample the
    # distribution's upper part by its quantiles instead of drawing (deterministic, cheap)
    qs = [median * math.exp(sigma * z) for z in _NORMAL_GRID]
    left = [d - elapsed for d in qs if d > elapsed]
    if len(left) >= 3:
        hist = Interval(quantile(left, 0.1), quantile(left, 0.5), quantile(left, 0.9))
    else:  # already longer than nearly every past attempt: it ends "soon", in a time like what it ran
        hist = Interval(0.05 * elapsed, 0.25 * elapsed, elapsed)
    if progress is None or not 0 < progress < 100 or elapsed <= 0:
        return hist
    rate = elapsed * (100 - progress) / progress
    w = progress / 100  # the further it got, the more its own rate says
    return Interval((1 - w) * hist.p10 + w * rate * 0.7, (1 - w) * hist.p50 + w * rate,
                    (1 - w) * hist.p90 + w * rate * 1.4)


#: standard normal quantiles at 1%, 3%, ... 99%: a fixed sample of a log-normal's shape
_NORMAL_GRID = tuple(statistics.NormalDist().inv_cdf((i + 0.5) / 50) for i in range(50))


def observed_slots(in_flight: int, ready: int) -> int | None:
    """The slots a run has, as far as its present says: while nodes wait ready, those in flight are all it
    gets; with none waiting, no limit is visible (None)."""
    return in_flight if ready and in_flight else None


def _expand_pending(tasks: Sequence[Task], history: History) -> list[Task]:
    """Unexpanded sweeps become the nodes their members ran in past runs (their own dependencies; the sweep
    stays as an instant task after them, so its dependants still wait for all of them)."""
    if not any(t.sweep for t in tasks):
        return list(tasks)
    out: list[Task] = []
    fresh = -1
    for t in tasks:
        if not t.sweep:
            out.append(t)
            continue
        prefix = t.template + "/"
        made: list[int] = []
        for template, count in sorted(history.counts.items()):
            if template.startswith(prefix):
                for _ in range(max(1, round(count))):
                    out.append(Task(fresh, template, "waiting", deps=t.deps))
                    made.append(fresh)
                    fresh -= 1
        # a sweep no past run expanded: one node of unknown length (the fallback duration)
        out.append(Task(t.key, t.template, "instant" if made else "waiting", deps=tuple(made) or t.deps))
    return out


def estimate_remaining(tasks: Sequence[Task], history: History, *, slots: int | None = None) -> Interval | None:
    """The remaining time of a run (p10, p50, p90), or None when nothing is known to estimate from.

    ``slots``: how many nodes may run at once (None: as many as are ready)."""
    tasks = _expand_pending(tasks, history)
    medians = {t: statistics.median(ds) for t, ds in history.durations.items() if ds}
    speed, said = pace(tasks, medians)
    done: dict[str, list[float]] = {}
    for t in tasks:
        if t.state == "done" and t.elapsed > 0:
            done.setdefault(t.template, []).append(t.elapsed)
    known = [d for ds in history.durations.values() for d in ds] + [d for ds in done.values() for d in ds]
    fallback = statistics.median(known) * speed if known else None
    left = [t for t in tasks if t.state != "done"]
    if not left:
        return Interval(0.0, 0.0, 0.0)
    durations: dict[int, float] = {}
    spread: dict[int, float] = {}
    #: template -> its expected (median, spread), computed once: each is a median over every ended node of
    #: the template, and a sweep's thousands of waiting members share one (per task, the estimate of a
    #: 30,000-member sweep took longer than the 5 s between two and starved the engine)
    by_template: dict[str, tuple[float, float] | None] = {}
    for t in left:
        if t.state == "instant":
            durations[t.key], spread[t.key] = 0.0, 0.0
            continue
        if t.template not in by_template:
            by_template[t.template] = expected(t.template, history, done, speed, fallback)
        e = by_template[t.template]
        if e is None:
            return None
        median, sigma = e
        if t.state == "running":
            iv = remaining_of_running(median, sigma, t.elapsed, t.progress)
            durations[t.key] = iv.p50
            spread[t.key] = math.log(max(iv.p90, 1e-6) / max(iv.p10, 1e-6)) / (2 * Z90) if iv.p10 > 0 else sigma
        else:
            durations[t.key], spread[t.key] = median, sigma
    total = _replay(left, durations, slots)
    if total <= 0:
        return Interval(0.0, 0.0, 0.0)
    # node noise averages out over many nodes in sequence (weighted by their share of the work); the run's
    # pace is one shared factor, known better the more of the run has ended
    work = sum(durations.values()) or 1.0
    # between independent (the spread of a sum) and fully shared (the spread of the longest of parallel nodes,
    # which does not average out): halfway, calibrated on tests/perf/bench_estimates.py
    shares = [(durations[k] / work, spread[k]) for k in durations]
    node_sigma = 0.5 * (math.sqrt(sum((w * s) ** 2 for w, s in shares)) + sum(w * s for w, s in shares))
    prior = history.run_sigma if history.run_sigma is not None else DEFAULT_RUN_SIGMA
    pace_sigma = prior * math.sqrt(PRIOR_NODES / (PRIOR_NODES + said))
    sigma = math.sqrt(node_sigma ** 2 + pace_sigma ** 2)
    return Interval(total * math.exp(-Z90 * sigma), total, total * math.exp(Z90 * sigma))


def _replay(left: Sequence[Task], durations: Mapping[int, float], slots: int | None) -> float:
    """The time to finish ``left`` in dependency order on ``slots`` slots (running ones hold theirs first)."""
    slots = max(1, slots) if slots else len(left)
    if len(left) > MAX_REPLAYED:  # a huge run: its work over its slots, or its longest node if that is longer
        return max(sum(durations.values()) / slots, max(durations.values()))
    keys = {t.key for t in left}
    waiting_on = {t.key: sum(1 for d in set(t.deps) if d in keys) for t in left}
    children: dict[int, list[int]] = {}
    for t in left:
        for d in set(t.deps):
            if d in keys:
                children.setdefault(d, []).append(t.key)
    running = [(durations[t.key], t.key) for t in left if t.state == "running"]
    heapq.heapify(running)
    ready = [t.key for t in left if t.state != "running" and not waiting_on[t.key]]
    now = 0.0
    busy = len(running)
    while running or ready:
        while ready and busy < slots:
            key = ready.pop()
            heapq.heappush(running, (now + durations[key], key))
            busy += 1
        if not running:  # a cycle cannot happen in a DAG; nothing left that can start
            break
        now, key = heapq.heappop(running)
        busy -= 1
        for child in children.get(key, ()):
            waiting_on[child] -= 1
            if not waiting_on[child]:
                ready.append(child)
    return now


def estimate_node(template: str, elapsed: float, progress: float | None, history: History,
                  run: Sequence[Task] = ()) -> Interval | None:
    """A running node's remaining time from its template's history, the run's pace and its own progress."""
    medians = {t: statistics.median(ds) for t, ds in history.durations.items() if ds}
    speed, _ = pace(run, medians)
    done: dict[str, list[float]] = {}
    for t in run:
        if t.state == "done" and t.elapsed > 0:
            done.setdefault(t.template, []).append(t.elapsed)
    e = expected(template, history, done, speed, None)
    if e is None:
        return None
    return remaining_of_running(e[0], e[1], elapsed, progress)
