"""The pure rules: when a node may run, how groups end, the transition tables, the workflow state."""

from __future__ import annotations

import pytest

from broker.description.model import Requires
from broker.errors import StateError
from broker.rules import Decision, decide, group_outcome
from broker.states import (GROUP_TRANSITIONS, TERMINAL, TRANSITIONS, FailureConstraint, NodeState,
                           WorkflowState, check_transition, derive_workflow_state)

ALL = Requires()


def test_by_default_a_node_waits_for_all_parents_and_runs_when_all_succeeded():
    assert decide(ALL, unfinished=1, ok_units=2, bad_units=0, named_bad=False) is Decision.WAIT
    assert decide(ALL, unfinished=0, ok_units=3, bad_units=0, named_bad=False) is Decision.READY


def test_by_default_one_bad_parent_skips_the_node_at_once_without_waiting_for_the_others():
    assert decide(ALL, unfinished=5, ok_units=0, bad_units=1, named_bad=False) is Decision.SKIP


def test_named_parents_must_succeed_and_the_others_may_fail():
    req = Requires(parents=("a",))
    assert decide(req, unfinished=0, ok_units=1, bad_units=4, named_bad=False) is Decision.READY
    assert decide(req, unfinished=3, ok_units=0, bad_units=1, named_bad=True) is Decision.SKIP
    assert decide(req, unfinished=1, ok_units=1, bad_units=0, named_bad=False) is Decision.WAIT


@pytest.mark.parametrize("ok, bad, expected", [(8, 2, Decision.READY), (7, 3, Decision.SKIP), (0, 0, Decision.READY),
                                               (4, 0, Decision.READY)])
def test_a_tolerance_is_the_fraction_of_units_that_must_succeed_decided_once_all_parents_ended(ok, bad, expected):
    req = Requires(tolerance=0.8)
    assert decide(req, unfinished=0, ok_units=ok, bad_units=bad, named_bad=False) is expected
    assert decide(req, unfinished=1, ok_units=ok, bad_units=bad, named_bad=False) is Decision.WAIT


def test_a_group_fails_if_any_child_failed_else_is_cancelled_if_any_was_cancelled():
    assert group_outcome(ok=3, bad=0, cancelled=0) is NodeState.SUCCEEDED
    assert group_outcome(ok=3, bad=1, cancelled=2) is NodeState.FAILED
    assert group_outcome(ok=3, bad=0, cancelled=1) is NodeState.CANCELLED


def test_the_transition_table_covers_every_state_and_succeeded_is_final():
    assert set(TRANSITIONS) == set(NodeState)
    assert TRANSITIONS[NodeState.SUCCEEDED] == frozenset()
    # every other terminal state can only go back to waiting (a restart)
    for state in TERMINAL - {NodeState.SUCCEEDED}:
        assert TRANSITIONS[state] == {NodeState.WAITING}


@pytest.mark.parametrize("current, new", [(NodeState.WAITING, NodeState.RUNNING),
                                          (NodeState.SUCCEEDED, NodeState.WAITING),
                                          (NodeState.READY, NodeState.SUCCEEDED),
                                          (NodeState.RETRY_WAIT, NodeState.RUNNING),
                                          (NodeState.SKIPPED, NodeState.READY)])
def test_illegal_node_transitions_are_refused(current, new):
    with pytest.raises(StateError, match=f"illegal node transition {current} -> {new}"):
        check_transition(current, new)


def test_groups_have_their_own_table_and_reopen_only_from_failed_or_cancelled():
    check_transition(NodeState.FAILED, NodeState.RUNNING, group=True)
    with pytest.raises(StateError):
        check_transition(NodeState.SUCCEEDED, NodeState.RUNNING, group=True)
    assert set(GROUP_TRANSITIONS[NodeState.RUNNING]) == {NodeState.SUCCEEDED, NodeState.FAILED, NodeState.CANCELLED}


def test_the_workflow_state_derives_from_node_counts():
    strict = FailureConstraint()
    assert derive_workflow_state({NodeState.WAITING: 2, NodeState.READY: 1}, strict) is WorkflowState.ACCEPTED
    # a node back to ready for its retry (or restarted) leaves a started workflow running
    assert derive_workflow_state({NodeState.READY: 1}, strict, started=True) is WorkflowState.RUNNING
    assert derive_workflow_state({NodeState.SUCCEEDED: 1, NodeState.WAITING: 2}, strict) is WorkflowState.RUNNING
    assert derive_workflow_state({NodeState.SUCCEEDED: 3}, strict) is WorkflowState.SUCCEEDED
    assert derive_workflow_state({NodeState.SUCCEEDED: 2, NodeState.FAILED: 1}, strict) is WorkflowState.FAILED
    assert derive_workflow_state({NodeState.SUCCEEDED: 2, NodeState.SKIPPED: 1}, strict) is WorkflowState.FAILED
    assert derive_workflow_state({NodeState.SUCCEEDED: 2, NodeState.CANCELLED: 1}, strict, cancel_requested=True) \
        is WorkflowState.CANCELLED


def test_a_failure_constraint_allows_a_count_or_a_fraction_whichever_is_larger():
    assert FailureConstraint(max_failed=2).allows(2, 100) and not FailureConstraint(max_failed=2).allows(3, 100)
    assert FailureConstraint(fraction=0.05).allows(5, 100) and not FailureConstraint(fraction=0.05).allows(6, 100)
    assert FailureConstraint(max_failed=10, fraction=0.05).allows(10, 100)
