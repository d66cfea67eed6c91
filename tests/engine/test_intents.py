"""Launch intents on a real engine: committed with the end that freed their slot or readied their node, and
the same outcome (limits held, nothing lost) when the scheduler answers the writer too late."""

from __future__ import annotations

import pytest

from broker.persistence import writer
from broker.states import WorkflowState
from tests.engine.helpers import lines, marker, workflow


def chain(tmp_path, names: str) -> bytes:
    nodes, before = [], None
    for name in names:
        depends = f'<dependsOn node="{before}"/>' if before else ""
        nodes.append(f'<node id="{name}">{depends}<payload type="sh">{marker(tmp_path, "ran")}</payload></node>')
        before = name
    return workflow("".join(nodes))


def independent(tmp_path, count: int) -> bytes:
    # each records its start and its end: two attempts overlapping would show as start, start
    payload = f'{marker(tmp_path, "span")}; sleep 0.05; {marker(tmp_path, "span")}'
    return workflow("".join(f'<node id="n{i}"><payload type="sh">{payload}</payload></node>' for i in range(count)))


def times(broker, wf: int) -> dict[tuple[str, str], object]:
    return {(e.node_path, e.state): e.time for e in broker.events(wf) if e.type == "NODE_STATE"}


def test_a_childs_intent_is_committed_with_its_parents_end(broker, tmp_path):
    wf, state = broker.run(chain(tmp_path, "abcd"))
    assert state is WorkflowState.SUCCEEDED and len(lines(tmp_path, "ran")) == 4
    at = times(broker, wf)
    for parent, child in ("ab", "bc", "cd"):
        # one transaction, one commit time: the end, the child's readiness and its launch intent
        assert at[(child, "ready")] == at[(parent, "succeeded")] == at[(child, "queued")], (parent, child)


def test_a_freed_slot_goes_to_the_next_queued_node_in_the_commit_of_the_end(make_broker, tmp_path):
    broker = make_broker(max_in_flight=1).start()
    wf, state = broker.run(independent(tmp_path, 4))
    assert state is WorkflowState.SUCCEEDED
    spans = [line.split()[0] for line in lines(tmp_path, "span")]
    assert spans == [p for n in sorted(set(spans), key=spans.index) for p in (n, n)]  # one at a time
    at = times(broker, wf)
    ended = sorted(at[(f"n{i}", "succeeded")] for i in range(4))
    queued = sorted(at[(f"n{i}", "queued")] for i in range(4))
    assert queued[1:] == ended[:-1]  # each later intent in the commit of the end before it


@pytest.mark.slow
def test_an_answer_too_late_for_the_writer_is_committed_next_and_counts_once(make_broker, tmp_path, monkeypatch):
    real_answer = writer.Admission.answer

    def give_up(self, timeout):  # the writer's side: it waits no longer
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()
        return []

    def late(self, changes):  # the scheduler's side: it answers only once the writer gave up
        with self._cond:
            self._cond.wait_for(lambda: self._abandoned)
        return real_answer(self, changes)

    monkeypatch.setattr(writer.Admission, "wait", give_up)
    monkeypatch.setattr(writer.Admission, "answer", late)
    broker = make_broker(max_in_flight=1).start()
    wf, state = broker.run(independent(tmp_path, 4))
    assert state is WorkflowState.SUCCEEDED
    spans = [line.split()[0] for line in lines(tmp_path, "span")]
    # a slot counted free twice (once in the answer, once after the commit) would let two run at once
    assert spans == [p for n in sorted(set(spans), key=spans.index) for p in (n, n)]
    wf2, state = broker.run(chain(tmp_path, "xyz"))
    assert state is WorkflowState.SUCCEEDED
    at = times(broker, wf2)
    assert at[("y", "queued")] > at[("x", "succeeded")]  # in the next commit


def test_a_big_workflow_is_tracked_in_a_commit_of_its_own_after_its_rows(broker, tmp_path, monkeypatch):
    # Past TRACK_LATER_NODES top-level nodes (5,000 shipped; 3 here) a submission commits its rows first, and
    # its tracking (read back into the mirror, roots made ready) in a later commit: every user's changes that
    # waited for the first go in between (tests/perf/bench_stall.py: 8.2 s -> 2.9 s for 100,000 nodes)
    from broker.persistence import store

    monkeypatch.setattr(store, "TRACK_LATER_NODES", 3)
    for count, later in ((3, False), (4, True)):
        wf, state = broker.run(independent(tmp_path, count))
        assert state is WorkflowState.SUCCEEDED
        events = broker.events(wf)
        submitted = next(e.time for e in events if e.type == "WORKFLOW_SUBMITTED")
        ready = {e.time for e in events if e.type == "NODE_STATE" and e.state == "ready"}
        assert len(ready) == 1 and (min(ready) > submitted) is later, (count, submitted, ready)
