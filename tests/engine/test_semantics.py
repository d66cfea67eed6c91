"""Engine semantics on a real engine: retries, timeouts, cancel, restart, reports, limits, priorities, staging."""

from __future__ import annotations

import hashlib
import json

import pytest

from broker.states import WorkflowState
from tests.engine.helpers import Broker, lines, marker, process_gone, workflow
from tests.fixtures import wait_for


@pytest.mark.slow
def test_a_failed_attempt_is_retried_with_exponential_backoff_until_it_succeeds(broker, tmp_path):
    doc = workflow(f"""
      <node id="flaky">
        <execution><retry count="3" backoff="200ms" maxBackoff="10s"/></execution>
        <payload type="sh">{marker(tmp_path, "flaky")}
          date +%s.%N >> "{tmp_path}/flaky.times"
          test "$WB_ATTEMPT" -ge 3</payload>
      </node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "flaky") == ["flaky 1", "flaky 2", "flaky 3"]
    starts = [float(t) for t in (tmp_path / "flaky.times").read_text().split()]
    # attempt 2 waits at least the backoff, attempt 3 at least twice that
    assert starts[1] - starts[0] >= 0.2 and starts[2] - starts[1] >= 0.4
    retries = [e for e in broker.events(wf) if e.type == "NODE_RETRY"]
    assert [e.properties["delay"] for e in retries] == [0.2, 0.4]
    node = broker.nodes(wf)["flaky"]
    assert (node.attempt, node.retries, node.exit_code) == (3, 2, 0)


def test_a_node_that_runs_out_of_retries_fails_and_skips_its_dependants(broker, tmp_path):
    doc = workflow(f"""
      <node id="bad">
        <execution><retry count="1" backoff="10ms"/></execution>
        <payload type="sh">{marker(tmp_path, "bad")}; exit 4</payload>
      </node>
      <node id="after"><dependsOn node="bad"/><payload type="sh">{marker(tmp_path, "after")}</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    assert len(lines(tmp_path, "bad")) == 2 and lines(tmp_path, "after") == []
    nodes = broker.nodes(wf)
    assert (nodes["bad"].state, nodes["bad"].exit_code, nodes["bad"].message) == ("failed", 4, "exit code 4")
    assert nodes["after"].state == "skipped" and "bad" in nodes["after"].message


@pytest.mark.slow
def test_a_node_past_its_timeout_is_killed_with_its_whole_process_group(broker, tmp_path):
    doc = workflow(f"""
      <node id="slow">
        <execution><timeout>1s</timeout></execution>
        <payload type="sh">sleep 60 &amp; echo $! > "{tmp_path}/child.pid"; wait</payload>
      </node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    node = broker.nodes(wf)["slow"]
    assert node.state == "failed" and "timeout" in node.message
    child = int((tmp_path / "child.pid").read_text())
    wait_for(lambda: process_gone(child), deadline=10, what="the payload's child to be killed")


@pytest.mark.slow
def test_a_timed_out_attempt_is_retried_when_retries_are_left(broker, tmp_path):
    doc = workflow(f"""
      <node id="slow">
        <execution><retry count="1" backoff="10ms"/><timeout>500ms</timeout></execution>
        <payload type="sh">{marker(tmp_path, "slow")}; test "$WB_ATTEMPT" = 2 || sleep 60</payload>
      </node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "slow") == ["slow 1", "slow 2"]


def test_cancelling_a_running_workflow_kills_its_payloads_and_cancels_everything(broker, tmp_path):
    doc = workflow(f"""
      <node id="long"><payload type="sh">echo $$ > "{tmp_path}/long.pid"; exec sleep 60</payload></node>
      <node id="after"><dependsOn node="long"/><payload type="sh">{marker(tmp_path, "after")}</payload></node>
      <node id="other"><dependsOn node="long"/><payload type="sh">true</payload></node>""")
    wf = broker.submit(doc)
    pid = int(wait_for(lambda: (tmp_path / "long.pid").exists() and (tmp_path / "long.pid").read_text().strip(),
                       what="the payload to start"))
    wait_for(lambda: broker.node_states(wf)["long"] == "running", what="the node to be running")
    broker.engine.cancel(wf, "user:alice")
    assert broker.wait(wf) is WorkflowState.CANCELLED
    assert broker.node_states(wf) == {"long": "cancelled", "after": "cancelled", "other": "cancelled"}
    wait_for(lambda: process_gone(pid), deadline=10, what="the payload to be killed")
    assert lines(tmp_path, "after") == []
    assert broker.workflow(wf).cancel_requested


def test_cancel_is_idempotent(broker, tmp_path):
    doc = workflow('<node id="long"><payload type="sh">exec sleep 60</payload></node>')
    wf = broker.submit(doc)
    wait_for(lambda: broker.node_states(wf)["long"] == "running", what="the node to run")
    broker.engine.cancel(wf, "user:alice")
    broker.engine.cancel(wf, "user:alice")
    assert broker.wait(wf) is WorkflowState.CANCELLED
    broker.engine.cancel(wf, "user:alice")
    states = [e.state for e in broker.events(wf) if e.type == "NODE_STATE" and e.node_path == "long"]
    assert states.count("cancelled") == 1


def test_restart_reruns_failed_and_skipped_nodes_but_keeps_succeeded_ones(broker, tmp_path):
    flag = tmp_path / "fixed"
    doc = workflow(f"""
      <node id="first"><payload type="sh">{marker(tmp_path, "first")}</payload></node>
      <node id="flaky"><dependsOn node="first"/>
        <payload type="sh">{marker(tmp_path, "flaky")}; test -e "{flag}"</payload></node>
      <node id="last"><dependsOn node="flaky"/><payload type="sh">{marker(tmp_path, "last")}</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    assert broker.node_states(wf) == {"first": "succeeded", "flaky": "failed", "last": "skipped"}
    flag.touch()
    broker.engine.restart(wf, "user:alice")
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "first") == ["first 1"]
    assert lines(tmp_path, "flaky") == ["flaky 1", "flaky 2"]
    assert lines(tmp_path, "last") == ["last 1"]
    assert broker.workflow(wf).finished_at is not None


def test_restarting_a_workflow_that_succeeded_changes_nothing(broker, tmp_path):
    wf, state = broker.run(workflow(f'<node id="a"><payload type="sh">{marker(tmp_path, "a")}</payload></node>'))
    assert state is WorkflowState.SUCCEEDED
    broker.engine.restart(wf, "user:alice")
    broker.engine.restart(wf, "user:alice")
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "a") == ["a 1"]


def test_restarting_one_failed_sweep_member_reruns_only_that_member(broker, tmp_path):
    flag = tmp_path / "fixed"
    doc = workflow(f"""
      <sweep id="s">
        <param name="i"><range from="1" to="4"/></param>
        <body><node id="work"><payload type="sh">{marker(tmp_path, "work")}
          test "$WB_PARAM_i" != 3 || test -e "{flag}"</payload></node></body>
      </sweep>
      <node id="end"><dependsOn node="s"/><payload type="sh">{marker(tmp_path, "end")}</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    states = broker.node_states(wf)
    assert states["s[2]/work"] == "failed" and states["s"] == "failed" and states["end"] == "skipped"
    flag.touch()
    from broker.persistence.control import resolve_target

    with broker.sessions() as s:
        _, node_ids = resolve_target(s, f"{broker.workflow(wf).global_id}/s[2]/work")
    broker.engine.restart(wf, "user:alice", tuple(node_ids))
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    assert sorted(lines(tmp_path, "work")) == ["s[0]/work 1", "s[1]/work 1", "s[2]/work 1", "s[2]/work 2",
                                               "s[3]/work 1"]
    assert lines(tmp_path, "end") == ["end 1"]
    assert broker.node_states(wf)["s"] == "succeeded"


def test_progress_and_output_properties_reach_the_database_as_events(broker):
    doc = workflow("""
      <node id="reporter">
        <payload type="sh">echo '@broker progress 25 "reading"'
          echo '@broker output answer=42'
          echo '@broker output tags=["a","b"]'
          echo '@broker progress 100 "done"'</payload>
        <output name="answer"/><output name="tags"/>
      </node>""", eventLevel="DEBUG")
    wf, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    node = broker.nodes(wf)["reporter"]
    assert node.outputs == {"answer": 42, "tags": ["a", "b"]}
    assert node.progress == 100
    events = broker.events(wf)
    outputs = {e.properties["name"]: e.properties["value"] for e in events if e.type == "NODE_OUTPUT"}
    assert outputs == {"answer": 42, "tags": ["a", "b"]}
    progress = [e for e in events if e.type == "NODE_PROGRESS"]
    assert progress and progress[-1].properties["percent"] == 100 and progress[-1].message == "done"
    assert any(e.type == "NODE_LAUNCH" for e in events)


def test_on_failure_stop_cancels_the_rest_once_the_constraint_is_broken(broker, tmp_path):
    doc = workflow(f"""
      <failureConstraint onFailure="stop"/>
      <node id="bad"><payload type="sh">exit 1</payload></node>
      <node id="long"><payload type="sh">echo $$ > "{tmp_path}/long.pid"; exec sleep 60</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED  # failed, not cancelled: the user did not cancel it
    assert broker.node_states(wf) == {"bad": "failed", "long": "cancelled"}


def test_the_workflow_failure_constraint_tolerates_the_allowed_failures(broker):
    doc = workflow("""
      <failureConstraint maxFailed="1"/>
      <node id="bad"><payload type="sh">exit 1</payload></node>
      <node id="good"><payload type="sh">true</payload></node>""")
    _, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED


def test_explicit_required_parents_let_a_node_run_after_an_unrequired_parent_failed(broker):
    doc = workflow("""
      <failureConstraint maxFailed="1"/>
      <node id="needed"><payload type="sh">true</payload></node>
      <node id="optional"><payload type="sh">exit 1</payload></node>
      <node id="join"><dependsOn node="needed"/><dependsOn node="optional"/><requires parents="needed"/>
        <payload type="sh">true</payload></node>""")
    wf, state = broker.run(doc)
    assert broker.node_states(wf)["join"] == "succeeded"
    assert state is WorkflowState.SUCCEEDED


def test_a_workflows_max_in_flight_bounds_its_concurrent_nodes(make_broker, tmp_path):
    # Each payload logs its start, then waits (bounded) for a gate that the test opens only once two of them are
    # running at once: the peak is exactly 2 however loaded the machine, at least 2 because of the gate, at most
    # 2 because of maxInFlight (a payload's start and end lie within the broker's in-flight time for it).
    broker = make_broker(max_in_flight=8).start()
    log, gate = tmp_path / "log", tmp_path / "gate"
    body = "".join(f'<node id="n{i}"><payload type="sh">echo start $(date +%s.%N) >> "{log}"; i=0; '
                   f'while [ ! -e "{gate}" ] &amp;&amp; [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; '
                   f'echo end $(date +%s.%N) >> "{log}"</payload></node>' for i in range(6))
    wf = broker.submit(workflow(body, maxInFlight="2"))
    wait_for(lambda: log.exists() and log.read_text().count("start") >= 2, what="two payloads running at once")
    gate.touch()
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    events = sorted((float(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines()))
    assert len(events) == 12
    running = peak = 0
    for _, kind in events:
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def test_ready_nodes_start_in_priority_order(make_broker, tmp_path):
    broker = make_broker(max_in_flight=1).start()
    body = '<node id="gate"><payload type="sh">true</payload></node>' + "".join(
        f'<node id="p{p}" priority="{p}"><dependsOn node="gate"/>'
        f'<payload type="sh">echo {p} >> "{tmp_path}/order"</payload></node>' for p in (1, 5, 3, -2, 4))
    _, state = broker.run(workflow(body))
    assert state is WorkflowState.SUCCEEDED
    assert (tmp_path / "order").read_text().split() == ["5", "4", "3", "1", "-2"]


def test_an_expansion_over_the_member_limit_fails_the_sweep_with_a_clear_message(make_broker):
    broker = make_broker()
    import dataclasses

    broker.settings = dataclasses.replace(broker.settings,
                                          limits=dataclasses.replace(broker.settings.limits, max_members=3))
    broker.start()
    doc = workflow("""
      <node id="gen"><payload type="sh">echo '@broker output items=[1,2,3,4,5]'</payload>
        <output name="items"/></node>
      <sweep id="s"><dependsOn node="gen"/>
        <param name="x"><fromOutput node="gen" property="items"/></param>
        <body><node id="w"><payload type="sh">true</payload></node></body></sweep>
      <node id="after"><dependsOn node="s"/><payload type="sh">true</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    nodes = broker.nodes(wf)
    assert nodes["s"].state == "failed"
    assert nodes["s"].message == "expansion failed: parameterized node 's' would expand to 5 members (limit 3)"
    assert nodes["after"].state == "skipped"
    assert not any(p.startswith("s[") for p in nodes)


def test_an_upstream_output_that_is_not_a_json_array_fails_the_sweep(broker):
    doc = workflow("""
      <node id="gen"><payload type="sh">echo '@broker output items={"a":1}'</payload><output name="items"/></node>
      <sweep id="s"><dependsOn node="gen"/>
        <param name="x"><fromOutput node="gen" property="items"/></param>
        <body><node id="w"><payload type="sh">true</payload></node></body></sweep>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    assert "is not a JSON array" in broker.nodes(wf)["s"].message


def test_an_empty_upstream_list_expands_to_no_members_and_the_sweep_succeeds(broker, tmp_path):
    doc = workflow(f"""
      <node id="gen"><payload type="sh">echo '@broker output items=[]'</payload><output name="items"/></node>
      <sweep id="s"><dependsOn node="gen"/>
        <param name="x"><fromOutput node="gen" property="items"/></param>
        <body><node id="w"><payload type="sh">true</payload></node></body></sweep>
      <node id="after"><dependsOn node="s"/><payload type="sh">{marker(tmp_path, "after")}</payload></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    assert broker.nodes(wf)["s"].members == 0
    assert lines(tmp_path, "after") == ["after 1"]


def test_parameter_values_reach_payloads_as_prefixed_variables_and_quoted_template_text(broker, tmp_path):
    hostile = "$(touch PWNED); `touch PWNED2` 'q' \"d\""
    doc = workflow(f"""
      <sweep id="s">
        <param name="PATH"><value>{hostile.replace('"', '&quot;')}</value></param>
        <body><node id="w"><payload type="bash" template="true"><![CDATA[
          cd "{tmp_path}"
          printf '%s' {{{{ PATH }}}} > from-template
          printf '%s' "$WB_PARAM_PATH" > from-env
          command -v sh > path-still-works
        ]]></payload></node></body></sweep>""")
    _, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    assert (tmp_path / "from-template").read_text() == hostile
    assert (tmp_path / "from-env").read_text() == hostile
    assert (tmp_path / "path-still-works").read_text().strip()
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_files_are_staged_in_before_launch_and_out_after_success_with_checksums(broker, tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("hello staging\n")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    doc = workflow(f"""
      <node id="copy">
        <payload type="sh">tr a-z A-Z &lt; in/data.txt > result.txt</payload>
        <stageIn source="file://{source}" target="in/data.txt" checksum="sha256:{digest}"/>
        <stageOut source="result.txt" target="file://{tmp_path}/out/result.txt"/>
      </node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.SUCCEEDED
    assert (tmp_path / "out" / "result.txt").read_text() == "HELLO STAGING\n"
    states = [e.state for e in broker.events(wf) if e.type == "NODE_STATE"]
    assert states == ["ready", "staging_in", "queued", "running", "staging_out", "succeeded"]


@pytest.mark.parametrize("source, why", [
    ("file:///etc/passwd", "outside the staging roots"),
    ("ftp://example.org/x", "unsupported stage-in source"),
])
def test_disallowed_stage_in_sources_fail_the_node_without_retrying(broker, tmp_path, source, why):
    doc = workflow(f"""
      <node id="copy">
        <execution><retry count="3" backoff="10ms"/></execution>
        <payload type="sh">true</payload><stageIn source="{source}" target="x"/></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    node = broker.nodes(wf)["copy"]
    assert why in node.message and node.attempt == 1


def test_a_stage_target_leaving_the_work_directory_is_refused(broker, tmp_path):
    (tmp_path / "in.txt").write_text("x")
    doc = workflow(f"""
      <node id="copy"><payload type="sh">true</payload>
        <stageIn source="file://{tmp_path}/in.txt" target="../../escape.txt"/></node>""")
    wf, state = broker.run(doc)
    assert state is WorkflowState.FAILED
    assert "must not contain '..'" in broker.nodes(wf)["copy"].message
    assert not list(tmp_path.rglob("escape.txt"))


def test_events_of_a_workflow_have_contiguous_sequence_numbers_and_outbox_rows(migrated_url, tmp_path):
    from sqlalchemy import func, select

    from broker.persistence.models import Event, Outbox

    broker = Broker(migrated_url, tmp_path)
    # outbox rows are written only with a bus: the in-process one
    broker.settings = broker.settings.replace("events", url=f"memory://semantics-{tmp_path.name}")
    broker.start()
    try:
        wf, _ = broker.run(workflow('<node id="a"><payload type="sh">true</payload></node>'))
        events = broker.events(wf)
        with broker.sessions() as s:
            rows = s.execute(select(Outbox.destination, func.count()).join(Event, Event.id == Outbox.event_id)
                             .where(Event.workflow_id == wf).group_by(Outbox.destination)).all()
    finally:
        broker.stop()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # at the default event level (STATUS) the DEBUG launch detail stays in the history only
    published = [e for e in events if e.level <= 2]
    assert len(published) == len(events) - 1
    assert dict(rows) == {"/topic/broker.events": len(published), "/topic/broker.user.alice": len(published)}
    assert json.dumps([e.properties for e in events])  # every property set is JSON
