"""A workflow's progress from the writer's committed counts (the API's status read) equals counting its nodes."""

from __future__ import annotations

from broker.persistence import queries
from broker.persistence.progress import ProgressBoard
from broker.states import WorkflowState
from tests.engine.helpers import workflow
from tests.fixtures import wait_for


def statuses(broker, gid: str) -> tuple[float | None, float | None]:
    """(progress through the engine's board, progress by counting the nodes)."""
    with broker.engine.db.connect() as connection:
        board = queries.current_status(connection, gid, None, broker.engine.progress).progress
        counted = queries.current_status(connection, gid, None).progress
    return board, counted


def test_progress_follows_the_commits_through_a_failure_and_a_restart(broker, tmp_path):
    doc = workflow(f"""
      <node id="fast"><payload type="sh">true</payload></node>
      <node id="flaky"><payload type="sh">test -e "{tmp_path}/ok" || exit 1
        i=0; while [ ! -e "{tmp_path}/gate" ] &amp;&amp; [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done</payload></node>""")
    wf = broker.submit(doc)
    assert broker.wait(wf) is WorkflowState.FAILED
    gid = broker.workflow(wf).global_id
    assert broker.engine.progress.get(gid) == (2, 2)
    assert statuses(broker, gid) == (100.0, 100.0)
    (tmp_path / "ok").touch()
    broker.engine.restart(wf, "user:alice")
    wait_for(lambda: broker.node_states(wf)["flaky"] == "running", what="the restarted node to run")
    assert statuses(broker, gid) == (50.0, 50.0)
    (tmp_path / "gate").touch()
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    assert statuses(broker, gid) == (100.0, 100.0)


def test_a_workflow_finished_before_the_broker_started_is_counted_once_then_remembered(make_broker, tmp_path):
    first = make_broker().start()
    wf, state = first.run(workflow('<node id="a"><payload type="sh">true</payload></node>'))
    assert state is WorkflowState.SUCCEEDED
    gid = first.workflow(wf).global_id
    first.stop()
    second = make_broker().start()
    assert second.engine.progress.get(gid) is None
    assert statuses(second, gid) == (100.0, 100.0)
    assert second.engine.progress.get(gid) == (1, 1)


def test_the_board_is_bounded_and_never_replaces_the_writers_counts_with_a_database_read():
    board = ProgressBoard(capacity=2)
    board(1, "wf-a", WorkflowState.RUNNING, {"succeeded": 1, "running": 3, "failed": 1})
    assert board.get("wf-a") == (5, 2)
    board.remember("wf-a", 5, 0)  # read before the commit above: older
    assert board.get("wf-a") == (5, 2)
    board.remember("wf-b", 1, 1)
    board(1, "wf-a", WorkflowState.SUCCEEDED, {"succeeded": 5})  # moves to the newest end
    board.remember("wf-c", 2, 2)  # full: the oldest (wf-b) goes
    assert (board.get("wf-a"), board.get("wf-b"), board.get("wf-c")) == ((5, 5), None, (2, 2))
