"""The scheduler's launch intents committed in the transaction that made them possible (Admission).

The writer shows the scheduler what an open transaction did (a parent's end, its child's readiness) and adds
the intents it answers to that transaction: one durable commit for the end, the readiness and the intent."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from broker.description.model import WorkflowSpec
from broker.persistence import repository as repo
from broker.persistence import store as store_module
from broker.persistence.changes import Committed, Track, Transition
from broker.persistence.models import Event, Node
from broker.persistence.store import Store
from broker.states import NodeState
from tests.persistence.specs import DESCRIPTOR, node


def running_chain(sessions, store: Store) -> dict[str, int]:
    """A tracked chain a -> b with a running (attempt 1) and b waiting; node ids by name."""
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="chain", nodes=(node("a"), node("b", "a"))),
                                  descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    with sessions() as s:
        ids = dict(s.execute(select(Node.path, Node.id).where(Node.workflow_id == wf_id)).all())
    for to, new_attempt in ((NodeState.QUEUED, True), (NodeState.RUNNING, False)):
        store.commit([Transition(node_id=ids["a"], to=to, actor="submission", attempt=None,
                                 new_attempt=new_attempt)])
    return ids


class Scheduler:
    """Answers each question with an intent for every node the transaction readied."""

    def __init__(self, token: int = 7):
        self.asked: list[Committed] = []
        self.token = token

    def __call__(self, committed: Committed) -> tuple[list, int]:
        self.asked.append(committed)
        return [Transition(node_id=r.node_id, to=NodeState.QUEUED, actor="submission", attempt=r.attempt,
                           new_attempt=True) for r in committed.ready], self.token


def states_and_times(sessions, ids: dict[str, int]) -> list[tuple[str, str, object]]:
    """(node path, state, time) of each state event of the nodes, in commit order."""
    with sessions() as s:
        rows = s.execute(select(Event.node_path, Event.state, Event.time).where(
            Event.type == "NODE_STATE", Event.node_path.in_(list(ids))).order_by(Event.id)).all()
    return [tuple(r) for r in rows]


def test_a_childs_intent_joins_the_commit_of_its_parents_end(sessions):
    store = Store(sessions)
    ids = running_chain(sessions, store)
    scheduler = Scheduler()
    out = store.commit([Transition(node_id=ids["a"], to=NodeState.SUCCEEDED, actor="monitoring", attempt=1)],
                       admit=scheduler)
    [asked] = scheduler.asked
    # it was shown the end (the freed slot) and the readiness, before anything was committed
    assert [(m.node_id, m.old, m.new) for m in asked.moved] == [
        (ids["a"], NodeState.RUNNING, NodeState.SUCCEEDED), (ids["b"], NodeState.WAITING, NodeState.READY)]
    assert [r.node_id for r in asked.ready] == [ids["b"]]
    assert out.committed.admitted == 7
    # after the commit b is queued (so no longer ready) and its intent's move is told as usual
    assert out.committed.ready == ()
    assert (ids["b"], NodeState.READY, NodeState.QUEUED) in [(m.node_id, m.old, m.new) for m in out.committed.moved]
    with sessions() as s:
        assert (s.get(Node, ids["b"]).state, s.get(Node, ids["b"]).attempt) == (NodeState.QUEUED.value, 1)
    rows = states_and_times(sessions, ids)
    ended = [t for p, st, t in rows if (p, st) == ("a", "succeeded")]
    child = [(st, t) for p, st, t in rows if p == "b"]
    # one transaction: the same commit time for the end, the readiness and the intent
    assert child == [("ready", ended[0]), ("queued", ended[0])]


def test_a_batch_that_frees_and_readies_nothing_asks_nothing(sessions):
    store = Store(sessions)
    ids = running_chain(sessions, store)
    scheduler = Scheduler()
    out = store.commit([Transition(node_id=ids["a"], to=NodeState.RUNNING, actor="monitoring", attempt=1,
                                   fields=(("job_id", "42"),))], admit=scheduler)
    assert scheduler.asked == [] and out.committed.admitted is None


@pytest.mark.slow
def test_a_retried_batch_commits_the_intents_once_without_asking_again(sessions, monkeypatch):
    store = Store(sessions)
    ids = running_chain(sessions, store)
    scheduler = Scheduler(token=3)
    writer = store._sql(None)  # created by the commits above
    real, failures = writer.write, []

    def cut_once(s, batch, guard):
        if not failures:  # the connection dies as the batch is written: nothing of it committed
            failures.append(1)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return real(s, batch, guard)

    monkeypatch.setattr(writer, "write", cut_once)
    changes = [Transition(node_id=ids["a"], to=NodeState.SUCCEEDED, actor="monitoring", attempt=1)]
    out = store.commit(changes, admit=scheduler)
    # asked once: it counted the end then, and must not count it again for the retry
    assert len(scheduler.asked) == 1 and failures == [1] and out.committed.admitted == 3
    assert len(changes) == 2  # the intent joined the batch, so the retry committed it with the rest
    rows = states_and_times(sessions, ids)
    assert [(p, st) for p, st, _ in rows if p == "b"] == [("b", "ready"), ("b", "queued")]
    with sessions() as s:
        assert s.get(Node, ids["b"]).attempt == 1


def test_a_batch_that_starts_tracking_a_workflow_asks_nothing(sessions):
    # the scheduler would read the workflow's plan from the database, where it is not committed yet
    store = Store(sessions)
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="one", nodes=(node("a"),)), descriptor=DESCRIPTOR,
                                  owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    scheduler = Scheduler()
    out = store.commit([Track(wf_id)], admit=scheduler)
    assert scheduler.asked == [] and [r.path for r in out.committed.ready] == ["a"]


def test_a_batch_readying_more_nodes_than_the_bound_asks_nothing(sessions, monkeypatch):
    monkeypatch.setattr(store_module, "ADMIT_MAX_READY", 1)
    store = Store(sessions)
    with sessions.begin() as s:
        spec = WorkflowSpec(name="fan", nodes=(node("a"), node("b", "a"), node("c", "a")))
        wf_id = repo.submit_workflow(s, spec, descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice")).id
    store.commit([Track(wf_id)])
    with sessions() as s:
        a = s.scalars(select(Node.id).where(Node.workflow_id == wf_id, Node.path == "a")).one()
    store.commit([Transition(node_id=a, to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True)])
    scheduler = Scheduler()
    out = store.commit([Transition(node_id=a, to=NodeState.SUCCEEDED, actor="monitoring", attempt=1)], admit=scheduler)
    # two ready at once, over the bound of one: the scheduler hears of them after the commit only
    assert scheduler.asked == [] and out.committed.admitted is None
    assert sorted(r.path for r in out.committed.ready) == ["b", "c"]
