"""Changes naming nodes of a finished workflow that has left the writer's mirror (broker/persistence/settled.py).

After a cancel, the scheduler's launch intents for the nodes it took just before reach the writer once the
workflow has finished and left the mirror. Refusing them loaded the whole workflow again (a 100,000-node one:
its plan, rows and nodes, over 100 MB, after every cancel) and told the scheduler about a workflow it never
forgot: memory that `broker serve` did not get back (tests/perf/bench_memory.py, README "Memory after big
work"). They are refused from the node's row now, with the mirror's own reasons.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from broker.controllers.submission import SubmissionController
from broker.description.model import WorkflowSpec
from broker.errors import StateError
from broker.persistence import repository as repo
from broker.persistence.changes import CancelWorkflow, Committed, Expansion, Reported, Track, Transition, WorkflowInfo
from broker.persistence.models import Node, Workflow
from broker.persistence.store import Store
from broker.states import NodeState, WorkflowState
from tests.persistence.helpers import bundle, intents
from tests.persistence.specs import DESCRIPTOR, node

#: nodes of the "big" workflow: enough for a reload to cost megabytes, few enough for a quick test
SIZE = 2_000


def cancelled_workflow(sessions, store: Store, size: int) -> dict[str, int]:
    """A workflow of ``size`` independent nodes, tracked, ready, then cancelled (it leaves the mirror)."""
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, WorkflowSpec(name="big", nodes=tuple(node(f"n{i}") for i in range(size))),
                                  descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice"))
        wf_id = wf.id
    store.commit([Track(wf_id)])
    store.commit([CancelWorkflow(wf_id, "admin:root")])
    with sessions() as s:
        assert s.get(Workflow, wf_id).state == WorkflowState.CANCELLED.value
        ids = dict(s.execute(select(Node.path, Node.id).where(Node.workflow_id == wf_id)).all())
    assert store.mirror.workflows == {} and store.mirror.nodes == {}
    return ids


@pytest.mark.slow
def test_late_launch_intents_after_a_cancel_do_not_load_the_workflow_again(sessions, monkeypatch):
    store = Store(sessions)
    ids = cancelled_workflow(sessions, store, SIZE)
    loads = []
    real_track = store.track
    monkeypatch.setattr(store, "track", lambda *a: loads.append(a[1]) or real_track(*a))
    names = [f"n{i}" for i in range(8)]
    late = intents(ids, names, bundle(ids, names))  # what the scheduler had sent just before the cancel
    tracemalloc.start()
    try:
        out = store.commit(late)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loads == []
    assert out.followups == [] and out.committed.tracked == () and out.summaries == []
    assert store.mirror.workflows == {} and store.mirror.nodes == {} and out.freed == 0
    # loading the workflow again costs about 1.3 KB per node (2.6 MB here): what is left is per change
    assert peak < 400_000, f"refusing 9 late changes took {peak:,} bytes for a {SIZE:,}-node workflow"
    with sessions() as s:
        assert {s.get(Node, ids[n]).state for n in names} == {NodeState.CANCELLED.value}


def refusals(store: Store, changes: list, monkeypatch, *, loaded_first: int | None = None) -> list[tuple[str, type]]:
    """(reason, error type) of each change's refusal, committed one by one; ``loaded_first``: load that
    workflow into the mirror in the same commit first, so that the mirror itself refuses (as before)."""
    found: list[tuple[str, type]] = []
    real = store._reject
    monkeypatch.setattr(store, "_reject", lambda out, change, reason, error=None: (
        found.append((reason, type(error))), real(out, change, reason, error)))
    for change in changes:
        store.commit([*([Track(loaded_first)] if loaded_first else []), change])
    monkeypatch.setattr(store, "_reject", real)
    assert len(found) == len(changes)
    return found


def test_the_refusals_are_the_ones_the_mirror_gives(sessions, monkeypatch):
    store = Store(sessions)
    ids = cancelled_workflow(sessions, store, 3)
    with sessions() as s:
        wf_id = s.execute(select(Node.workflow_id).where(Node.id == ids["n0"])).scalar_one()
    n0 = ids["n0"]
    changes = [
        Transition(node_id=n0, to=NodeState.QUEUED, actor="submission", attempt=0, new_attempt=True),
        Transition(node_id=n0, to=NodeState.RUNNING, actor="monitoring", attempt=4),
        Transition(node_id=n0, to=NodeState.SUCCEEDED, actor="elf", attempt=None),
        Reported(node_id=n0, attempt=0, actor="elf", progress=(5.0, "x")),
        Reported(node_id=n0, attempt=2, actor="elf", progress=(5.0, "x")),
        Expansion(node_id=n0, actor="submission", members=()),
    ]
    settled = refusals(store, changes, monkeypatch)
    assert settled == refusals(store, changes, monkeypatch, loaded_first=wf_id)
    assert settled[0] == ("illegal node transition cancelled -> queued", StateError)
    assert settled[1][0] == "stale report for attempt 4 of 'n0' (now 0)"
    assert store.mirror.workflows == {}


def test_a_change_the_table_allows_still_applies(sessions):
    """A finished node may go back to waiting: that is the mirror's to do (the workflow is loaded, as before)."""
    store = Store(sessions)
    ids = cancelled_workflow(sessions, store, 3)
    out = store.commit([Transition(node_id=ids["n1"], to=NodeState.WAITING, actor="admin:root", reply_to="r")])
    assert out.replies == [] and len(out.committed.tracked) == 1
    with sessions() as s:
        assert s.get(Node, ids["n1"]).state == NodeState.WAITING.value


@pytest.mark.parametrize("state", [WorkflowState.CANCELLED, WorkflowState.SUCCEEDED, WorkflowState.FAILED])
def test_the_scheduler_keeps_no_slots_for_a_workflow_loaded_while_finished(state):
    engine = SimpleNamespace(max_in_flight=10, max_in_flight_per_user=10, control_interval=1.0)
    scheduler = SubmissionController(None, {}, SimpleNamespace(settings=SimpleNamespace(engine=engine)))
    info = WorkflowInfo(workflow_id=7, global_id="g7", owner="alice", priority=0, max_in_flight=None,
                        on_failure="continue", state=state)
    scheduler.on_committed(Committed(tracked=(info,)))
    assert scheduler.workflows == {}
    scheduler.on_committed(Committed(tracked=(dataclasses.replace(info, state=WorkflowState.RUNNING),)))
    assert list(scheduler.workflows) == [7]
