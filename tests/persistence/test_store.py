"""The store (the writer's one path to the database): follow-ups told only for what was committed."""

from __future__ import annotations

from sqlalchemy import select

import pytest

from broker.description.model import WorkflowSpec
from broker.persistence import repository as repo
from broker.persistence.changes import CancelNodes, Reported, Track, Transition
from broker.persistence.models import Node
from broker.persistence.store import Store
from broker.states import NodeState
from tests.persistence.helpers import bundle, intents
from tests.persistence.specs import DESCRIPTOR, node


def ready_nodes(sessions, store: Store, names: str) -> dict[str, int]:
    """A tracked workflow of independent nodes, all READY; their ids by name."""
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="flat", nodes=tuple(node(n) for n in names)),
                                  descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    with sessions() as s:
        ids = dict(s.execute(select(Node.path, Node.id).where(Node.workflow_id == wf_id)).all())
        assert {s.get(Node, i).state for i in ids.values()} == {NodeState.READY.value}
    return ids


def launched(out) -> list[str]:
    [(ref, work)] = out.followups
    assert ref == "worker" and work.reply_to == "monitoring"
    return [r.path for r in work.action.nodes]


def test_a_bundle_whose_intents_all_commit_is_launched_whole(sessions):
    store = Store(sessions)
    ids = ready_nodes(sessions, store, "abc")
    out = store.commit(intents(ids, "abc", bundle(ids, "abc")))
    assert launched(out) == ["a", "b", "c"]


@pytest.mark.slow
def test_a_bundle_launches_without_a_member_cancelled_before_its_intent(sessions):
    store = Store(sessions)
    ids = ready_nodes(sessions, store, "abc")
    # the cancel reaches the writer first; the scheduler had not heard of it when it made the bundle
    store.commit([CancelNodes((ids["c"],), "user:alice")])
    out = store.commit(intents(ids, "abc", bundle(ids, "abc")))
    assert launched(out) == ["a", "b"]
    with sessions() as s:
        assert s.get(Node, ids["c"]).state == NodeState.CANCELLED.value
        assert s.get(Node, ids["a"]).state == NodeState.QUEUED.value


def test_a_bundle_whose_every_intent_was_refused_launches_nothing(sessions):
    store = Store(sessions)
    ids = ready_nodes(sessions, store, "ab")
    store.commit([CancelNodes((ids["a"], ids["b"]), "user:alice")])
    assert store.commit(intents(ids, "ab", bundle(ids, "ab"))).followups == []


@pytest.mark.slow
def test_the_check_holds_when_a_failed_batch_is_applied_change_by_change(sessions, monkeypatch):
    store = Store(sessions)
    ids = ready_nodes(sessions, store, "abc")
    store.commit([CancelNodes((ids["b"],), "user:alice")])
    real = store._commit
    calls = []

    def first_batch_fails(changes, *consult):
        calls.append(len(changes))
        if len(calls) == 1:
            raise RuntimeError("the database went away")
        return real(changes, *consult)

    monkeypatch.setattr(store, "_commit", first_batch_fails)
    out = store.commit(intents(ids, "abc", bundle(ids, "abc")))
    assert calls[0] == 4 and len(calls) == 5  # the batch, then each of its four changes alone
    assert launched(out) == ["a", "c"]


@pytest.mark.slow
def test_the_same_progress_from_both_channels_is_one_event(sessions):
    from broker.events.types import EventType
    from broker.persistence.models import Event

    store = Store(sessions)
    ids = ready_nodes(sessions, store, "a")
    store.commit([Transition(node_id=ids["a"], to=NodeState.QUEUED, actor="submission", attempt=0,
                             new_attempt=True)])
    # the elf's push and the broker's read of the output report the same line; then a new one
    for progress in [(25.0, "a"), (25.0, "a"), (75.0, "b"), (75.0, "b")]:
        store.commit([Reported(node_id=ids["a"], attempt=1, actor="elf", progress=progress)])
    with sessions() as s:
        events = s.scalars(select(Event).where(Event.type == EventType.NODE_PROGRESS.value).order_by(Event.id)).all()
        assert [(e.properties["percent"], e.message) for e in events] == [(25.0, "a"), (75.0, "b")]
        assert s.get(Node, ids["a"]).progress == 75.0


def test_a_retryable_failure_is_a_field_of_the_transition_and_its_policy_decides(sessions):
    import dataclasses

    from broker.description.model import Execution, Retry

    policy = Execution(retry=Retry(count=1, backoff=60.0))
    retried = tuple(dataclasses.replace(node(n), execution=policy) for n in "rf")
    store = Store(sessions)
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="retry", nodes=retried), descriptor=DESCRIPTOR,
                                  owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    with sessions() as s:
        ids = dict(s.execute(select(Node.path, Node.id).where(Node.workflow_id == wf_id)).all())
    store.commit([Transition(node_id=ids[n], to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True)
                  for n in "rf"])

    store.commit([Transition(node_id=ids["r"], to=NodeState.FAILED, actor="monitoring", attempt=1, retryable=True,
                               fields=(("exit_code", 3),)),
                  Transition(node_id=ids["f"], to=NodeState.FAILED, actor="monitoring", attempt=1)])

    with sessions() as s:
        r, f = s.get(Node, ids["r"]), s.get(Node, ids["f"])
        assert (r.state, r.retries, r.exit_code) == (NodeState.RETRY_WAIT.value, 1, 3)
        assert r.retry_at is not None
        assert (f.state, f.retries) == (NodeState.FAILED.value, 0)  # not retryable: failed, whatever the policy


def test_a_late_retryable_failure_of_an_ended_node_is_refused_without_announcing_a_retry(sessions):
    import dataclasses

    from broker.description.model import Execution, Retry
    from broker.persistence.models import Event

    policy = Execution(retry=Retry(count=2, backoff=60.0))
    store = Store(sessions)
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="late", nodes=(dataclasses.replace(node("a"), execution=policy),
                                                                      node("b"))),
                                  descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    with sessions() as s:
        ids = dict(s.execute(select(Node.path, Node.id).where(Node.workflow_id == wf_id)).all())
    store.commit([Transition(node_id=ids["a"], to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True)])
    store.commit([Transition(node_id=ids["a"], to=NodeState.SUCCEEDED, actor="monitoring", attempt=1)])
    # the same attempt's failure, late (a second report of a payload killed as it ended), in a batch with another
    out = store.commit([Transition(node_id=ids["a"], to=NodeState.FAILED, actor="monitoring", attempt=1,
                                   retryable=True, reply_to="monitoring"),
                        Transition(node_id=ids["b"], to=NodeState.QUEUED, actor="submission", attempt=0,
                                   new_attempt=True)])
    assert [type(reply).__name__ for _, reply in out.replies] == ["Rejected"]
    with sessions() as s:
        a, b = s.get(Node, ids["a"]), s.get(Node, ids["b"])
        assert (a.state, a.retries, a.retry_at) == (NodeState.SUCCEEDED.value, 0, None)
        assert b.state == NodeState.QUEUED.value  # the rest of the batch went on
        assert s.execute(select(Event).where(Event.type == "NODE_RETRY")).scalars().all() == []
    assert store.mirror.nodes[ids["a"]].retries == 0


def test_a_spawn_is_applied_with_its_result_once_and_a_second_copy_of_that_result_is_refused(sessions):
    from broker.description.spawn import record
    from broker.persistence.changes import Rejected

    store = Store(sessions)
    ids = ready_nodes(sessions, store, "p")
    store.commit([Transition(node_id=ids["p"], to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True)])
    spawned = record("f.xml", 1, (node("x"), node("y", "x")))
    result = Transition(node_id=ids["p"], to=NodeState.SUCCEEDED, actor="monitoring", attempt=1,
                        fields=(("exit_code", 0), ("spawn", spawned)), reply_to="monitoring")
    out = store.commit([result])
    # the attempt is over (its slot is freed) although the node runs on as the group of what it spawned
    assert [(m.old, m.new) for m in out.committed.moved if m.node_id == ids["p"]] == [
        (NodeState.QUEUED, NodeState.SUCCEEDED)]
    assert [r.path for r in out.committed.ready] == ["p/x"]
    again = store.commit([result])
    assert [type(reply) for _, reply in again.replies] == [Rejected]
    with sessions() as s:
        rows = {n.path: n for n in s.scalars(select(Node))}
    assert {p: (n.state, n.template) for p, n in rows.items()} == {
        "p": ("running", "p"), "p/x": ("ready", "p@%d.1/x" % ids["p"]), "p/y": ("waiting", "p@%d.1/y" % ids["p"])}
    assert rows["p"].members == 2 and rows["p"].exit_code == 0 and rows["p"].spawn == spawned
