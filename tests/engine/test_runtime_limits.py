"""Limits hold at run time (issue 12, section 1): sweeps whose values come from upstream outputs are checked, before
anything is written, against the workflow's stored nodes ([limits] max_nodes), and fail with the numbers."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

import pytest

from broker.persistence.models import Event, Node
from broker.states import WorkflowState
from tests.engine.helpers import Broker, workflow
from tests.fixtures import wait_for


def _outputs(count: int) -> str:
    return (f'<payload type="python">import json; print("@broker output v=" + json.dumps(list(range({count}))))'
            '</payload><output name="v"/>')


def _limited(make_broker, **limits) -> Broker:
    broker = make_broker()
    broker.settings = broker.settings.replace("limits", **limits)
    return broker.start()


def _nodes(broker: Broker, workflow_id: int) -> int:
    """Stored nodes as [limits] max_nodes counts them: sweep members are groups, not nodes."""
    with broker.sessions() as s:
        return s.scalar(select(func.count()).select_from(Node)
                        .where(Node.workflow_id == workflow_id, Node.kind != "member"))


def _messages(broker: Broker, workflow_id: int, path: str) -> list[str]:
    with broker.sessions() as s:
        return list(s.scalars(select(Event.message).where(Event.workflow_id == workflow_id, Event.node_path == path)))


def test_a_sweep_over_an_output_fails_with_the_numbers_when_its_nested_sweep_would_pass_max_nodes(make_broker):
    # statically 103 nodes (the output counts one value); at run time 100 members x (inner sweep + 100 nodes)
    broker = _limited(make_broker, max_nodes=2000)
    workflow_id, state = broker.run(workflow(f"""
        <node id="list">{_outputs(100)}</node>
        <sweep id="outer"><dependsOn node="list"/><param name="v"><fromOutput node="list" property="v"/></param>
          <body><sweep id="inner"><param name="w"><range from="0" to="99"/></param>
            <body><node id="work"><payload type="sh">true</payload></node></body></sweep></body></sweep>"""))
    assert state is WorkflowState.FAILED
    assert broker.node_states(workflow_id) == {"list": "succeeded", "outer": "failed"}
    assert ("expansion failed: parameterized node 'outer': expanding 100 members would make more than 10,100 "
            "nodes, limit 2,000 ([limits] max_nodes)") in _messages(broker, workflow_id, "outer")


@pytest.mark.slow
def test_sweeps_expanding_one_after_another_each_see_the_nodes_the_others_stored(make_broker):
    # 13 nodes once the outer sweep has expanded (outer, 6 x (producer + inner)); each inner sweep then adds 10:
    # three fit in 45, the other three would make 53 and fail, whatever order they expand in
    broker = _limited(make_broker, max_nodes=45)
    workflow_id, state = broker.run(workflow(f"""
        <sweep id="outer"><param name="i"><range from="1" to="6"/></param><body>
          <node id="producer">{_outputs(10)}</node>
          <sweep id="inner"><dependsOn node="producer"/>
            <param name="v"><fromOutput node="producer" property="v"/></param>
            <body><node id="work"><payload type="sh">true</payload></node></body></sweep></body></sweep>"""))
    assert state is WorkflowState.FAILED
    inner = {path: st for path, st in broker.node_states(workflow_id).items() if path.endswith("/inner")}
    assert sorted(inner.values()) == ["failed"] * 3 + ["succeeded"] * 3
    assert _nodes(broker, workflow_id) == 43
    for path, st in inner.items():
        if st == "failed":
            assert _messages(broker, workflow_id, path)[-1] == (
                f"parameterized node '{path}': expanding 10 members would make 53 nodes, limit 45 "
                "([limits] max_nodes)")


def test_a_sweep_nested_deeper_than_max_nesting_fails_when_it_expands(make_broker):
    # validated under a nesting of 2, run by a broker whose operator has since lowered it to 1
    broker = make_broker().start()
    document = workflow("""
        <sweep id="a"><param name="i"><value>1</value></param><body>
          <sweep id="b"><param name="j"><value>1</value></param>
            <body><node id="work"><payload type="sh">true</payload></node></body></sweep></body></sweep>""")
    from broker.description.load import load_description

    spec = load_description(document, broker.settings)
    broker.stop()
    broker = _limited(make_broker, max_nesting=1)
    workflow_id = broker.engine.submit(spec, document.decode(), "alice").workflow_id
    assert broker.wait(workflow_id) is WorkflowState.FAILED
    assert broker.node_states(workflow_id) == {"a": "failed", "a[0]": "failed", "a[0]/b": "failed"}
    assert _messages(broker, workflow_id, "a[0]/b")[-1] == (
        "expansion failed: parameterized node 'a[0]/b': sweeps nested 2 deep, limit 1 ([limits] max_nesting)")


def test_a_payload_flooding_its_output_keeps_max_output_names_and_the_broker_reads_it_at_reading_speed(make_broker):
    # half a million ordinary lines (read line by line in Python they took the broker seconds), then more
    # output names than an attempt may report: the first names stay, the rest are ignored, none is an event
    from broker.elf.elf import MAX_OUTPUT_NAMES

    broker = make_broker().start()
    names = MAX_OUTPUT_NAMES + 200
    workflow_id, state = broker.run(workflow(
        '<node id="flood"><payload type="python">import sys\n'
        'sys.stdout.write("@broker output v=1\\n" + "y\\n" * 500000)\n'
        f'sys.stdout.write("".join("@broker output n%d=%d\\n" % (i, i) for i in range({names})))\n'
        'print("@broker output v=2")</payload><output name="v"/></node>'))
    assert state is WorkflowState.SUCCEEDED
    with broker.sessions() as s:
        outputs = s.scalar(select(Node.outputs).where(Node.workflow_id == workflow_id, Node.path == "flood"))
        events = s.scalar(select(func.count()).select_from(Event).where(
            Event.workflow_id == workflow_id, Event.type == "NODE_OUTPUT"))
    assert len(outputs) == MAX_OUTPUT_NAMES and outputs["v"] == 2 and f"n{names - 1}" not in outputs
    assert events <= MAX_OUTPUT_NAMES


def test_output_names_reported_while_a_payload_runs_stay_within_max_output_names_across_reads(make_broker,
                                                                                             tmp_path):
    # 800 names read while it runs, 800 more read by a later read while it still runs (its progress line comes
    # after them): the monitoring controller takes 200 of those, as one read would
    from broker.elf.elf import MAX_OUTPUT_NAMES

    broker = make_broker().start()
    wait = ('def wait(name):\n'
            f'    while not os.path.exists({str(tmp_path)!r} + "/" + name): time.sleep(0.02)\n')
    workflow_id = broker.submit(workflow(
        '<node id="names"><payload type="python">import os, sys, time\n' + wait +
        'print("".join("@broker output n%d=%d\\n" % (i, i) for i in range(800)), flush=True)\n'
        'wait("more")\n'
        'print("".join("@broker output m%d=%d\\n" % (i, i) for i in range(800)), flush=True)\n'
        'print("@broker progress 50", flush=True)\n'
        'wait("end")</payload></node>'))

    def events(kind: str) -> list[str]:
        with broker.sessions() as s:
            return list(s.scalars(select(Event.message).where(Event.workflow_id == workflow_id,
                                                               Event.type == kind)))

    wait_for(lambda: len(events("NODE_OUTPUT")) >= 800, what="the first names read while the payload runs")
    (tmp_path / "more").touch()
    wait_for(lambda: events("NODE_PROGRESS"), what="the second names read while the payload runs")
    (tmp_path / "end").touch()
    assert broker.wait(workflow_id) is WorkflowState.SUCCEEDED
    names = events("NODE_OUTPUT")
    assert len(names) == MAX_OUTPUT_NAMES == len(set(names))
    assert set(names) == {f"n{i}" for i in range(800)} | {f"m{i}" for i in range(MAX_OUTPUT_NAMES - 800)}
    with broker.sessions() as s:
        outputs = s.scalar(select(Node.outputs).where(Node.workflow_id == workflow_id, Node.path == "names"))
    assert set(outputs) == set(names)


def _output_events(broker: Broker, workflow_id: int) -> list[tuple[str, Any]]:
    with broker.sessions() as s:
        return [(p["name"], p["value"]) for p in s.scalars(select(Event.properties).where(
            Event.workflow_id == workflow_id, Event.type == "NODE_OUTPUT").order_by(Event.id))]


def test_a_payload_reporting_more_output_bytes_than_an_attempt_may_hold_keeps_max_outputs_bytes(make_broker):
    # 20 values of a million characters: 16 fit in the 16 MiB an attempt may hold; the node row, its events and
    # its message say so (a thousand values of a mebibyte would have made a gigabyte row)
    from broker.elf.elf import MAX_OUTPUTS_BYTES, value_size

    broker = make_broker().start()
    workflow_id, state = broker.run(workflow(
        '<node id="big"><payload type="python">import sys\n'
        'for i in range(20): sys.stdout.write("@broker output b%d=\\"%s\\"\\n" % (i, "x" * 1000000))\n'
        '</payload></node>'))
    assert state is WorkflowState.SUCCEEDED
    with broker.sessions() as s:
        outputs = s.scalar(select(Node.outputs).where(Node.workflow_id == workflow_id, Node.path == "big"))
    assert sorted(outputs) == sorted(f"b{i}" for i in range(16))
    assert value_size(outputs) <= MAX_OUTPUTS_BYTES + 1000
    events = _output_events(broker, workflow_id)
    assert sorted(name for name, _ in events) == sorted(outputs)
    assert "4 @broker lines ignored" in _messages(broker, workflow_id, "big")[-1]


def test_output_events_of_a_running_payload_stop_past_max_outputs_bytes_and_its_final_value_still_counts(
        make_broker, tmp_path):
    # The payload reports a new mebibyte value of one name at each of 20 reads: without a bound on the bytes of
    # output events, each read would add a mebibyte to the event table as long as the payload runs. Sixteen
    # are sent; the rest are counted, and the value the node ends with is still its output and an event.
    from broker.elf.elf import MAX_OUTPUTS_BYTES

    broker = make_broker(report_interval=0.05).start()
    workflow_id = broker.submit(workflow(
        '<node id="loop"><payload type="python">import os, sys, time\n'
        'for r in range(20):\n'
        '    sys.stdout.write("@broker output big=\\"%s\\"\\n@broker progress %d\\n" % ("%02d" % r * 524287, r))\n'
        '    sys.stdout.flush()\n'
        f'    while not os.path.exists({str(tmp_path)!r} + "/go%d" % r): time.sleep(0.01)\n'
        '</payload></node>'))

    def progress() -> list[float]:
        with broker.sessions() as s:
            return [p["percent"] for p in s.scalars(select(Event.properties).where(
                Event.workflow_id == workflow_id, Event.type == "NODE_PROGRESS"))]

    for r in range(20):  # each value is read before the next is printed: one per read
        wait_for(lambda: r in progress(), what=f"progress {r} read")
        (tmp_path / f"go{r}").touch()
    assert broker.wait(workflow_id) is WorkflowState.SUCCEEDED
    events = _output_events(broker, workflow_id)
    # 16 values of 1,048,576 bytes while it ran (the 17th would pass 16 MiB), then its last value at its end
    assert [value[:2] for _, value in events] == [f"{r:02d}" for r in range(16)] + ["19"]
    assert sum(len(value) + 2 for _, value in events[:-1]) <= MAX_OUTPUTS_BYTES
    with broker.sessions() as s:
        outputs = s.scalar(select(Node.outputs).where(Node.workflow_id == workflow_id, Node.path == "loop"))
    assert outputs["big"][:2] == "19"
    # rounds 16 to 19 were read while it ran (the last while it waited for go19)
    assert "4 output reports ignored while it ran" in _messages(broker, workflow_id, "loop")[-1]
