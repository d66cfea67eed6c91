"""The writer actor's batching: changes nothing waits for (a start, progress, a note) linger for company, at
most LINGER, and share the commit of the change that follows; anything else is committed at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pykka
import pytest
from sqlalchemy import select

from broker.description.model import WorkflowSpec
from broker.persistence import repository as repo
from broker.persistence import writer as writer_module
from broker.persistence.changes import CancelWorkflow, Note, Track, Transition
from broker.persistence.models import Event, Node
from broker.persistence.store import Store
from broker.persistence.writer import Writer, lingers
from broker.states import NodeState
from tests.fixtures import wait_for
from tests.persistence.specs import DESCRIPTOR, node


@pytest.fixture
def queued(sessions) -> tuple[Store, int]:
    """A store with one tracked node, queued at attempt 1; (store, node id)."""
    store = Store(sessions)
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="one", nodes=(node("a"),)), descriptor=DESCRIPTOR,
                                  owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    with sessions() as s:
        node_id = s.scalars(select(Node.id).where(Node.workflow_id == wf_id)).one()
    store.commit([Transition(node_id=node_id, to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True)])
    return store, node_id


@pytest.fixture
def started(queued) -> Iterator[tuple[object, int]]:
    store, node_id = queued
    ref = Writer.start(store)
    try:
        yield ref, node_id
    finally:
        if ref.is_alive():
            ref.stop()


def running(node_id: int) -> Transition:
    return Transition(node_id=node_id, to=NodeState.RUNNING, actor="monitoring", attempt=1, fields=(("job_id", "7"),))


def commits(ref) -> int:
    return ref.proxy().commits.get()  # answered after every message told before it


def test_what_lingers_and_what_does_not():
    assert lingers(running(1)) and lingers(Note(workflow_id=1, type="NODE_LAUNCH", actor="monitoring"))
    assert not lingers(Transition(node_id=1, to=NodeState.SUCCEEDED, actor="monitoring", attempt=1))
    assert not lingers(Transition(node_id=1, to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True))
    # a start someone waits for (a reply, a follow-up) is committed at once
    assert not lingers(Transition(node_id=1, to=NodeState.RUNNING, actor="monitoring", attempt=1, reply_to=print))


def test_a_start_waits_for_the_end_that_follows_and_shares_its_commit(started, sessions, monkeypatch):
    monkeypatch.setattr(writer_module, "LINGER", 60.0)  # nothing but the next change can end the wait
    ref, node_id = started
    ref.tell(running(node_id))
    assert commits(ref) == 0
    ref.tell(Transition(node_id=node_id, to=NodeState.SUCCEEDED, actor="monitoring", attempt=1))
    wait_for(lambda: commits(ref) == 1, what="one commit")
    with sessions() as s:
        rows = s.execute(select(Event.state, Event.time).where(Event.type == "NODE_STATE", Event.node_path == "a")
                         .order_by(Event.id)).all()
        assert s.get(Node, node_id).state == NodeState.SUCCEEDED.value
    times = dict(rows)
    assert times["running"] == times["succeeded"]  # one transaction


def test_a_lone_start_is_committed_once_its_linger_ends(started, sessions):
    ref, node_id = started
    ref.tell(running(node_id))
    wait_for(lambda: commits(ref) == 1, what="the start committed alone")
    with sessions() as s:
        assert (s.get(Node, node_id).state, s.get(Node, node_id).job_id) == (NodeState.RUNNING.value, "7")


def test_a_stop_commits_what_lingers(started, sessions, monkeypatch):
    monkeypatch.setattr(writer_module, "LINGER", 60.0)
    ref, node_id = started
    ref.tell(running(node_id))
    assert commits(ref) == 0
    ref.stop()
    with sessions() as s:
        assert s.get(Node, node_id).state == NodeState.RUNNING.value


class Busy(pykka.ThreadingActor):
    """A scheduler stuck in something long until ``release`` is set; then it answers every admission empty."""

    def __init__(self, release: threading.Event):
        super().__init__()
        self.release = release
        self.admissions: list[writer_module.Admission] = []

    def on_receive(self, message):
        if isinstance(message, writer_module.Admission):
            self.admissions.append(message)
            message.answer([])
        else:  # the notification of a commit, or the message it is stuck in
            self.release.wait()


def test_a_busy_scheduler_costs_one_wait_not_one_per_commit(sessions, monkeypatch):
    monkeypatch.setattr(writer_module, "ADMIT_PATIENCE", 0.05)
    store = Store(sessions)
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="flat", nodes=tuple(node(n) for n in "abcde")),
                                  descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    with sessions() as s:
        ids = list(s.scalars(select(Node.id).where(Node.workflow_id == wf_id).order_by(Node.id)))
    store.commit([Transition(node_id=i, to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True)
                  for i in ids])
    release = threading.Event()
    busy = Busy.start(release)
    ref = Writer.start(store)

    def end(number: int) -> None:  # an end frees a slot: the scheduler is asked, if it is listening
        ref.tell(Transition(node_id=ids[number], to=NodeState.FAILED, actor="monitoring", attempt=1))
        wait_for(lambda: commits(ref) == number + 1, what="the end committed")

    try:
        ref.tell(writer_module.Subscribe(busy, admits=True))
        busy.tell("something long")
        for number in range(4):
            end(number)
        release.set()
        # answered after everything told before it: the scheduler was asked once, not four times
        assert len(busy.proxy().admissions.get()) == 1
        end(4)  # it has caught up: asked again
        assert len(busy.proxy().admissions.get()) == 2
    finally:
        release.set()
        ref.stop()
        busy.stop()


class Recorder(pykka.ThreadingActor):
    """Keeps every Committed it is told."""

    def __init__(self):
        super().__init__()
        self.told: list[object] = []

    def on_receive(self, message):
        self.told.append(message)


def told(ref) -> list:
    return ref.proxy().told.get()


def test_a_subscriber_of_some_fields_is_told_only_the_commits_that_fill_one(started, sessions):
    ref, node_id = started
    everything, kills = Recorder.start(), Recorder.start()
    try:
        ref.tell(writer_module.Subscribe(everything))
        ref.tell(writer_module.Subscribe(kills, only=("kill", "resume")))
        ref.tell(Transition(node_id=node_id, to=NodeState.RUNNING, actor="monitoring", attempt=1, reply_to=print))
        wait_for(lambda: commits(ref) == 1, what="the start committed")
        wait_for(lambda: len(told(everything)) == 1, what="the start's moves told to the subscriber of all")
        assert told(everything)[0].moved and not told(everything)[0].kill
        with sessions() as s:
            workflow_id = s.get(Node, node_id).workflow_id
        ref.tell(CancelWorkflow(workflow_id=workflow_id, actor="user:alice"))
        wait_for(lambda: len(told(kills)) == 1, what="the cancel's kill told")
        assert told(kills)[0].kill == ((node_id, 1),)
        wait_for(lambda: len(told(everything)) == 2, what="the cancel told to the subscriber of all")
        assert len(told(kills)) == 1  # the start was not told to it
    finally:
        everything.stop()
        kills.stop()


def test_a_subscription_to_a_field_committed_notifications_lack_is_refused():
    with pytest.raises(ValueError, match="no field kills"):
        writer_module.Subscribe(None, only=("kills",))
