"""Every attempt kept: the writer records each attempt of a node with its transitions (retry, restart,
recovery), on a real engine and both databases."""

from __future__ import annotations

from broker.persistence.attempts import attempts_of
from broker.states import WorkflowState
from tests.engine.helpers import Broker, lines, marker, workflow
from tests.engine.test_recovery import gate_doc
from tests.fixtures import wait_for


def _attempts(broker: Broker, wf: int, path: str) -> list:
    node = broker.nodes(wf)[path]
    with broker.sessions() as s:
        return attempts_of(s, node.id)


def test_each_retry_is_a_new_attempt_kept_with_its_outcome_exit_code_and_work_directory(broker, tmp_path):
    doc = workflow(f"""
      <node id="flaky">
        <execution><retry count="3" backoff="10ms"/></execution>
        <payload type="sh">{marker(tmp_path, "flaky")}; test "$WB_ATTEMPT" -ge 3 || exit "$WB_ATTEMPT"</payload>
      </node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    rows = _attempts(broker, wf, "flaky")
    assert [(a.number, a.outcome, a.exit_code) for a in rows] == [(1, "failed", 1), (2, "failed", 2),
                                                                   (3, "succeeded", 0)]
    assert [a.message for a in rows[:2]] == ["exit code 1", "exit code 2"]
    # each attempt has its own work directory, job id and times, in order
    assert len({a.workdir for a in rows}) == 3 and all(a.workdir.endswith(f"/{a.number}") for a in rows)
    assert all(a.job_id and a.host == "localhost" for a in rows)
    for a in rows:
        assert a.queued_at <= a.started_at <= a.finished_at
    assert rows[0].finished_at <= rows[1].queued_at
    node = broker.nodes(wf)["flaky"]
    assert (node.attempt, node.workdir) == (3, rows[2].workdir)


def test_a_restart_adds_an_attempt_and_keeps_the_failed_one(broker, tmp_path):
    flag = tmp_path / "fixed"
    doc = workflow(f"""
      <node id="a"><payload type="sh">test -e "{flag}" || {{ echo broken >&amp;2; exit 3; }}</payload></node>
      <node id="b"><dependsOn node="a"/><payload type="sh">true</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    assert _attempts(broker, wf, "b") == []  # skipped: it never made an attempt
    flag.touch()
    broker.engine.restart(wf, "user:alice")
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    assert [(a.number, a.outcome, a.exit_code) for a in _attempts(broker, wf, "a")] == [(1, "failed", 3),
                                                                                        (2, "succeeded", 0)]
    assert [(a.number, a.outcome) for a in _attempts(broker, wf, "b")] == [(1, "succeeded")]


def test_an_attempt_adopted_by_a_new_broker_stays_the_same_attempt(make_broker, tmp_path):
    first = make_broker().start()
    wf = first.submit(gate_doc(tmp_path))
    wait_for(lambda: lines(tmp_path, "slow"), what="the payload to start")
    wait_for(lambda: _attempts(first, wf, "slow") and _attempts(first, wf, "slow")[0].job_id,
             what="the start to be committed")
    before = _attempts(first, wf, "slow")[0]
    assert before.outcome is None and before.finished_at is None  # in flight
    first.stop()
    second = make_broker().start()
    second.engine.track(wf)
    (tmp_path / "gate").touch()
    assert second.wait(wf) is WorkflowState.SUCCEEDED
    rows = _attempts(second, wf, "slow")
    assert [(a.number, a.outcome, a.exit_code) for a in rows] == [(1, "succeeded", 0)]
    assert (rows[0].id, rows[0].job_id, rows[0].workdir) == (before.id, before.job_id, before.workdir)
