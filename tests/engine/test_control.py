"""Commands from other processes reach a running broker through the control table within a second."""

from __future__ import annotations

import time

from broker.persistence import control
from broker.states import WorkflowState
from tests.engine.helpers import workflow
from tests.fixtures import wait_for


def test_a_cancel_written_to_the_control_table_is_applied_by_the_running_broker(broker, tmp_path):
    wf = broker.submit(workflow('<node id="long"><payload type="sh">exec sleep 60</payload></node>'))
    wait_for(lambda: broker.node_states(wf)["long"] == "running", what="the node to run")
    gid = broker.workflow(wf).global_id
    with broker.engine.sessions.begin() as s:
        control_id = control.request(s, "cancel", gid, "user:alice")
    asked = time.monotonic()
    assert broker.wait(wf, deadline=10) is WorkflowState.CANCELLED
    with broker.sessions() as s:
        assert control.applied(s, control_id) == (True, "applied")
    assert time.monotonic() - asked < 5  # generous: the broker reads commands every control_interval


def test_a_restart_of_one_node_through_the_control_table_reruns_it(broker, tmp_path):
    flag = tmp_path / "ok"
    wf, state = broker.run(workflow(f'<node id="a"><payload type="sh">test -e "{flag}"</payload></node>'))
    assert state is WorkflowState.FAILED
    flag.touch()
    gid = broker.workflow(wf).global_id
    with broker.engine.sessions.begin() as s:
        control.request(s, "restart", f"{gid}/a", "user:alice")
    wait_for(lambda: broker.node_states(wf)["a"] == "succeeded", deadline=10, what="the restarted node")
    assert broker.wait(wf) is WorkflowState.SUCCEEDED


def test_a_control_command_for_an_unknown_target_is_refused_when_written(broker):
    import pytest

    from broker.errors import NotFound

    with pytest.raises(NotFound):
        with broker.engine.sessions.begin() as s:
            control.request(s, "cancel", "wf-0000000000000000zz", "user:alice")


def test_a_broker_run_engine_refuses_commands_for_workflows_it_does_not_run(make_broker, tmp_path):
    from tests.engine.helpers import Broker

    first = make_broker().start()
    other, state = first.run(workflow('<node id="a"><payload type="sh">exit 1</payload></node>'))
    assert state is WorkflowState.FAILED
    first.stop()
    runner = Broker(first.url, tmp_path, all_workflows=False)
    try:
        runner.start()
        mine = runner.submit(workflow('<node id="long"><payload type="sh">exec sleep 60</payload></node>'))
        with runner.engine.sessions.begin() as s:
            control_id = control.request(s, "restart", runner.workflow(other).global_id, "user:alice")

        def answered():
            with runner.sessions() as s:
                done, result = control.applied(s, control_id)
            return result if done else None

        result = wait_for(answered, deadline=10, what="the command to be answered")
        assert result.startswith("error: the running broker (broker run) only runs its own workflow")
        assert runner.node_states(other) == {"a": "failed"}
        runner.engine.cancel(mine, "user:alice")
        assert runner.wait(mine) is WorkflowState.CANCELLED
    finally:
        runner.stop()
