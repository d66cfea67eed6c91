"""kill -9 of ``broker run`` mid-run, then ``broker run`` again: the workflow completes, no node runs twice.

Each test runs the workflow of :func:`tests.crash.helpers.crash_workflow` (72 execute nodes, a chain, a fan,
a sweep and a nested sweep, at most 4 in flight) on SQLite and on PostgreSQL, kills the broker, runs the
same file again, and checks with :meth:`Crashes.assert_every_node_ran_once` that every node succeeded at its
first attempt and its marker file holds exactly one line.
"""

from __future__ import annotations

import pytest

from tests.crash.helpers import EXECUTE, SWEEPS, Crashes, expected_rows

pytestmark = pytest.mark.slow  # every test here kills and restarts `broker run` processes


@pytest.mark.parametrize("percent", [10, 30, 50, 70, 90])
def test_a_kill_at_any_point_of_the_run_is_resumed_without_running_a_node_twice(crashes: Crashes, percent: int):
    death = crashes.kill_at(percent / 100)
    # the kill landed mid-run (while a payload ran: kill_at waits for one): some nodes done, not all
    assert percent * EXECUTE / 100 <= death.done < EXECUTE
    assert death.state == "running"
    result = crashes.rerun()
    assert f": {death.done} of " in result.stdout.splitlines()[0]
    crashes.assert_every_node_ran_once()


@pytest.mark.parametrize("nth", [1, 2])
def test_a_kill_while_an_expansion_is_written_leaves_no_part_of_it_and_the_rerun_expands_once(
        crashes: Crashes, nth: int):
    crashes.crash_at(f"expansion:{nth}")
    nodes = crashes.nodes()
    ids = {n.id: path for path, n in nodes.items()}
    expanded = {path: n.members for path, n in nodes.items() if n.kind == "sweep" and n.members is not None}
    # the expansion being written when the broker died is all or nothing: some sweep is not expanded, every
    # expanded one has all of its members, and the rows are exactly those of the expansions committed
    assert len(expanded) < len(SWEEPS)
    for sweep, members in expanded.items():
        assert members == SWEEPS[sweep]
        assert sum(1 for n in nodes.values() if n.kind == "member" and ids[n.parent_id] == sweep) == members
    assert len(nodes) == expected_rows(expanded)
    crashes.rerun()
    crashes.assert_every_node_ran_once()


def test_an_attempt_whose_launch_intent_was_committed_but_not_started_runs_exactly_once(crashes: Crashes):
    crashes.crash_at("launch-intent:20")
    nodes = crashes.nodes()
    # committed (queued, attempt 1) but never started: no launch worker even made its work directory
    unstarted = [path for path, n in nodes.items()
                 if n.state == "queued" and not crashes.attempt_dir(path, n.attempt).exists()]
    assert unstarted, {p: n.state for p, n in nodes.items() if n.kind == "node"}
    assert all(nodes[p].attempt == 1 and crashes.lines(p) == [] for p in unstarted)
    crashes.rerun()
    crashes.assert_every_node_ran_once()
    assert all(crashes.lines(p) == [f"{p} 1"] for p in unstarted)


def test_the_result_of_a_payload_that_ended_as_its_broker_died_is_taken_not_run_again(crashes: Crashes):
    crashes.crash_at("exit:20")
    nodes = crashes.nodes()
    # ended (the wrapper recorded its exit status) but the dead broker never committed the result
    ended = [path for path, n in nodes.items() if n.kind == "node" and n.state in ("queued", "running")
             and (crashes.attempt_dir(path, n.attempt) / "exit").exists()]
    assert ended, {p: n.state for p, n in nodes.items() if n.kind == "node"}
    assert all(crashes.lines(p) == [f"{p} 1"] for p in ended)
    crashes.rerun()
    crashes.assert_every_node_ran_once()


def test_several_kills_of_the_same_workflow_still_run_every_node_once(crashes: Crashes):
    first = crashes.kill_at(0.2)
    assert first.done < EXECUTE
    second = crashes.kill_at(0.6, crashes.start())
    assert first.done <= second.done < EXECUTE
    assert crashes.output(2).startswith("resuming workflow ")
    crashes.rerun()
    crashes.assert_every_node_ran_once()
