"""Completion estimates (broker.estimates): pure functions over durations, checked against worked examples."""

from __future__ import annotations

import pytest

from broker.estimates import (ESTIMATE_SHARE, History, Interval, Task, estimate_node, estimate_remaining,
                              next_estimate_at, observed_slots, quantile, remaining_of_running, run_sigma)


def test_a_chain_with_a_steady_history_is_estimated_as_the_sum_of_what_is_left():
    history = History({"a": [10.0] * 5, "b": [20.0] * 5, "c": [30.0] * 5})
    tasks = [Task(1, "a", "done", 10.0), Task(2, "b", "running", 5.0, deps=(1,)), Task(3, "c", "waiting", deps=(2,))]
    est = estimate_remaining(tasks, history)
    # b has ~15 s left, then c takes 30 s
    assert est.p10 <= est.p50 <= est.p90
    assert est.p50 == pytest.approx(45, rel=0.15)


def test_the_runs_own_pace_scales_what_is_left():
    history = History({"x": [10.0] * 10})
    slow = [Task(i, "x", "done", 20.0) for i in range(10)] + [Task(100, "x", "waiting")]
    fast = [Task(i, "x", "done", 5.0) for i in range(10)] + [Task(100, "x", "waiting")]
    assert estimate_remaining(slow, history).p50 > 1.5 * 10 > estimate_remaining(fast, history).p50 * 1.5


def test_slots_make_parallel_work_queue():
    history = History({"x": [10.0] * 5})
    tasks = [Task(i, "x", "waiting") for i in range(8)]
    assert estimate_remaining(tasks, history, slots=None).p50 == pytest.approx(10, rel=0.01)
    assert estimate_remaining(tasks, history, slots=2).p50 == pytest.approx(40, rel=0.01)


def test_an_unexpanded_sweep_stands_for_what_its_members_ran_before():
    history = History({"s/x": [10.0] * 12, "end": [1.0] * 3}, counts={"s/x": 4, "end": 1})
    tasks = [Task(1, "s", "waiting", sweep=True), Task(2, "end", "waiting", deps=(1,))]
    # four members of 10 s on two slots, then the node after the sweep
    assert estimate_remaining(tasks, history, slots=2).p50 == pytest.approx(21, rel=0.01)


def test_without_any_duration_to_go_on_there_is_no_estimate_and_an_ended_run_has_nothing_left():
    assert estimate_remaining([Task(1, "new", "waiting")], History({})) is None
    assert estimate_remaining([Task(1, "x", "done", 3.0)], History({})) == Interval(0.0, 0.0, 0.0)


def test_a_running_node_longer_than_most_of_its_history_is_expected_to_end_soon():
    early = remaining_of_running(60.0, 0.3, 10.0, None)
    late = remaining_of_running(60.0, 0.3, 200.0, None)
    assert early.p50 == pytest.approx(50, rel=0.1)
    assert 0 < late.p10 <= late.p50 <= late.p90 <= 200


def test_progress_pulls_a_running_node_towards_its_own_rate():
    plain = remaining_of_running(100.0, 0.3, 50.0, None)
    ahead = remaining_of_running(100.0, 0.3, 50.0, 90.0)  # 90% after 50 s: about 5.6 s left at its rate
    assert ahead.p50 < plain.p50 / 3


def test_estimate_node_uses_the_template_history_and_none_without_it():
    history = History({"x": [100.0] * 5})
    est = estimate_node("x", 40.0, None, history)
    assert est.p50 == pytest.approx(60, rel=0.1)
    assert estimate_node("y", 40.0, None, history) is None


def test_helpers():
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0 and quantile([0.0, 10.0], 0.9) == 9.0
    assert observed_slots(4, 3) == 4 and observed_slots(4, 0) is None and observed_slots(0, 2) is None
    assert run_sigma([{"x": [10.0]}], {"x": 10.0}) is None  # one run says nothing about spread
    assert run_sigma([{"x": [10.0]}, {"x": [20.0]}, {"x": [5.0]}], {"x": 10.0}) > 0.4


def test_a_costly_estimate_waits_long_enough_to_take_a_small_share_of_the_time():
    assert next_estimate_at(100.0, 100.01, 5.0) == pytest.approx(105.01)  # cheap: the base interval after it
    assert next_estimate_at(100.0, 102.0, 5.0) == pytest.approx(102.0 + 2.0 / ESTIMATE_SHARE)
    assert 2.0 / (next_estimate_at(100.0, 102.0, 5.0) - 100.0) <= ESTIMATE_SHARE


def test_the_apis_estimates_of_a_costly_target_are_kept_longer(monkeypatch):
    from types import SimpleNamespace

    from broker.api import estimated

    clock = [100.0]
    calls = []

    def compute(api, status):
        calls.append(clock[0])
        clock[0] += cost[0]  # the estimate's own duration
        return f"estimate {len(calls)}"

    cost = [0.001]
    monkeypatch.setattr(estimated, "_compute", compute)
    cache = estimated.EstimateCache(clock=lambda: clock[0])
    cheap = SimpleNamespace(state="running", global_id="wf-cheap")
    assert cache.get(None, cheap) == "estimate 1"
    clock[0] += estimated.TTL - 0.1
    assert cache.get(None, cheap) == "estimate 1"  # kept TTL seconds
    clock[0] += 0.2
    assert cache.get(None, cheap) == "estimate 2"
    cost[0] = 2.0  # a huge workflow: two seconds an estimate
    costly = SimpleNamespace(state="running", global_id="wf-costly")
    assert cache.get(None, costly) == "estimate 3"
    clock[0] += 30.0  # well past TTL, not past 2 s / ESTIMATE_SHARE
    assert cache.get(None, costly) == "estimate 3"
    clock[0] += 2.0 / ESTIMATE_SHARE
    assert cache.get(None, costly) == "estimate 4"


def test_a_templates_expected_duration_is_computed_once_however_many_nodes_share_it(monkeypatch):
    from broker import estimates

    calls = []
    real = estimates.expected

    def counted(template, *args):
        calls.append(template)
        return real(template, *args)

    monkeypatch.setattr(estimates, "expected", counted)
    # a sweep half done: 3,000 ended members of each of two templates, 3,000 waiting of each
    tasks = [Task(i, "s/a" if i % 2 else "s/b", "done", 10.0 + i % 7) for i in range(6000)]
    tasks += [Task(6000 + i, "s/a" if i % 2 else "s/b", "waiting") for i in range(6000)]
    remaining = estimate_remaining(tasks, History({"s/a": [10.0] * 5}), slots=4)
    assert remaining is not None and remaining.p50 > 0
    assert sorted(calls) == ["s/a", "s/b"]
