"""A stopped or crashed broker loses nothing: a new one re-attaches, takes finished results, never reruns."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
from sqlalchemy import select

from broker.errors import BrokerLocked
from broker.persistence.changes import CancelWorkflow, Transition
from broker.persistence.db import make_engine, session_factory
from broker.persistence.models import Node
from broker.persistence.store import Store
from broker.states import NodeState, WorkflowState
from tests.engine.helpers import lines, marker, process_gone, workflow
from tests.fixtures import wait_for


def stored_workdir(url: str, workflow_id: int, path: str) -> str:
    eng = make_engine(url)
    try:
        with session_factory(eng)() as s:
            return s.scalar(select(Node.workdir).where(Node.workflow_id == workflow_id, Node.path == path))
    finally:
        eng.dispose()


def gate_doc(tmp_path, name="slow"):
    """A node that runs until a gate file appears (bounded), then a dependant."""
    return workflow(f"""
      <node id="{name}"><payload type="sh">{marker(tmp_path, name)}
        i=0; while [ ! -e "{tmp_path}/gate" ] &amp;&amp; [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done</payload></node>
      <node id="after"><dependsOn node="{name}"/><payload type="sh">{marker(tmp_path, "after")}</payload></node>""")


def test_a_new_broker_adopts_an_attempt_that_is_still_running(make_broker, tmp_path):
    first = make_broker().start()
    wf = first.submit(gate_doc(tmp_path))
    wait_for(lambda: lines(tmp_path, "slow"), what="the payload to start")
    first.stop()  # the payload keeps running
    second = make_broker().start()
    second.engine.track(wf)
    (tmp_path / "gate").touch()
    assert second.wait(wf) is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "slow") == ["slow 1"] and lines(tmp_path, "after") == ["after 1"]


def test_a_new_broker_takes_the_result_of_an_attempt_that_finished_while_no_broker_ran(make_broker, tmp_path):
    first = make_broker().start()
    wf = first.submit(gate_doc(tmp_path))
    wait_for(lambda: lines(tmp_path, "slow"), what="the payload to start")
    first.stop()
    (tmp_path / "gate").touch()
    # wait for the payload's own exit record, written by the wrapper without any broker
    workdir = stored_workdir(first.url, wf, "slow")
    wait_for(lambda: os.path.exists(f"{workdir}/exit"), what="the payload to finish on its own")
    second = make_broker().start()
    second.engine.track(wf)
    assert second.wait(wf) is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "slow") == ["slow 1"]


def test_an_attempt_whose_intent_was_committed_but_never_started_is_started_once(make_broker, tmp_path):
    first = make_broker(max_in_flight=0).start()  # nothing is launched by this broker
    wf = first.submit(workflow(f'<node id="a"><payload type="sh">{marker(tmp_path, "a")}</payload></node>'))
    first.stop()
    # commit the launch intent as the dead broker would have, without starting anything
    eng = make_engine(first.url)
    try:
        sessions = session_factory(eng)
        with sessions() as s:
            node_id = s.scalar(select(Node.id).where(Node.workflow_id == wf, Node.path == "a"))
        Store(sessions).commit([Transition(node_id=node_id, to=NodeState.QUEUED, actor="test", attempt=0,
                                           new_attempt=True)])
    finally:
        eng.dispose()
    second = make_broker().start()
    second.engine.track(wf)
    assert second.wait(wf) is WorkflowState.SUCCEEDED
    assert lines(tmp_path, "a") == ["a 1"]


def test_an_attempt_that_vanished_without_a_result_is_retried_per_its_policy(make_broker, tmp_path):
    first = make_broker().start()
    doc = workflow(f"""
      <node id="v"><execution><retry count="1" backoff="10ms"/></execution>
        <payload type="sh">{marker(tmp_path, "v")}; echo $$ > "{tmp_path}/v.$WB_ATTEMPT.pid"
          test "$WB_ATTEMPT" = 2 || exec sleep 60</payload></node>""")
    wf = first.submit(doc)
    pid_file = tmp_path / "v.1.pid"
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="attempt 1 to start")
    first.stop()
    # someone kills the payload's whole process group while no broker runs: no exit status is written
    os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGKILL)
    second = make_broker().start()
    second.engine.track(wf)
    assert second.wait(wf) is WorkflowState.SUCCEEDED
    node = second.nodes(wf)["v"]
    assert node.attempt == 2
    assert lines(tmp_path, "v") == ["v 1", "v 2"]


def test_only_one_broker_at_a_time_may_use_a_database(broker, make_broker):
    with pytest.raises(BrokerLocked, match="another broker is using"):
        make_broker().start()


def test_resuming_a_cancelled_workflow_kills_the_attempts_its_previous_broker_left_running(make_broker, tmp_path):
    first = make_broker().start()
    wf = first.submit(workflow(f'<node id="long"><payload type="sh">echo $$ > "{tmp_path}/pid"; '
                               f'exec sleep 60</payload></node>'))
    pid = int(wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip(),
                       what="the payload to start"))
    wait_for(lambda: first.node_states(wf)["long"] == "running", what="the node to run")
    first.stop()
    # the cancel is committed, but no broker is there to kill the attempt
    eng = make_engine(first.url)
    try:
        Store(session_factory(eng)).commit([CancelWorkflow(wf, "user:alice")])
    finally:
        eng.dispose()
    second = make_broker().start()
    second.engine.track(wf)
    assert second.wait(wf, deadline=20) is WorkflowState.CANCELLED
    wait_for(lambda: process_gone(pid), deadline=10, what="the payload to be killed")


@pytest.mark.slow
def test_a_restarted_broker_counts_adopted_attempts_against_their_hosts_job_limit(make_broker, tmp_path):
    catalogue = tmp_path / "hosts.xml"
    catalogue.write_text('<hosts xmlns="urn:workflow-broker:hosts:1.0" default="laptop">'
                         '<host name="laptop" launcher="local" maxJobs="2"/></hosts>')

    def with_catalogue(b):
        b.settings = dataclasses.replace(b.settings, hosts=dataclasses.replace(b.settings.hosts,
                                                                              catalogue=str(catalogue)))
        return b.start()

    # four independent nodes, each running until its own gate file appears
    nodes = "".join(f'<node id="{n}"><payload type="sh">{marker(tmp_path, n)}; i=0; '
                    f'while [ ! -e "{tmp_path}/gate-{n}" ] &amp;&amp; [ $i -lt 3000 ]; do sleep 0.01; '
                    f'i=$((i+1)); done</payload></node>' for n in "abcd")
    first = with_catalogue(make_broker())
    wf = first.submit(workflow(nodes))
    running = lambda b: sorted(p for p, s in b.node_states(wf).items() if s == "running")  # noqa: E731
    started = wait_for(lambda: len(running(first)) == 2 and running(first), what="two nodes to run")
    assert first.nodes(wf)[started[0]].host == "laptop"  # the catalogue name, not the launcher's "localhost"
    first.stop()  # both payloads keep running
    second = with_catalogue(make_broker())
    second.engine.track(wf)
    # the host is full with the two adopted attempts: the other two wait until one of them ends
    (tmp_path / f"gate-{started[0]}").touch()
    wait_for(lambda: second.node_states(wf)[started[0]] == "succeeded", what="the first gated node to end")
    waiting = [n for n in "abcd" if n not in started]
    wait_for(lambda: any(lines(tmp_path, n) for n in waiting), what="a third node to start")
    # the node still waiting has not even been given a launch intent (states after "ready" mean it was)
    states = second.node_states(wf)
    assert [states[n] for n in waiting].count("ready") == 1, f"a restarted broker overfilled the host: {states}"
    for n in "abcd":
        (tmp_path / f"gate-{n}").touch()
    assert second.wait(wf) is WorkflowState.SUCCEEDED
    assert all(len(lines(tmp_path, n)) == 1 for n in "abcd")
