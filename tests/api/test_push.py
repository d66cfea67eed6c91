"""updateNodeStatus: an elf session pushes status, progress and outputs; idempotent; stale attempts ignored."""

from __future__ import annotations

import json
import time
import warnings

import pytest
import zeep
from sqlalchemy import select
from zeep.wsse.username import UsernameToken

from tests.api.helpers import fault_code, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process


def elf_client(server, session_id, secret):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return zeep.Client(server.base + "/broker?wsdl", wsse=UsernameToken(str(session_id), secret)).service


@pytest.fixture
def running(server, tmp_path):
    """A workflow whose node runs until the test ends, and an elf session of its current attempt."""
    from broker.persistence.elfsessions import create_session

    gate = tmp_path / "go"
    handle = server.core().submit({"workflowContent": workflow(
        f'<node id="remote">{waits_for(gate)}</node>'
        '<node id="next"><dependsOn node="remote"/><payload type="sh">true</payload></node>')})
    node = wait_for(lambda: (n := server.node(handle.id, "remote")).state == "running" and n,
                    what="the node to run")
    session_id, secret = create_session(server.sessions(), node.id, node.attempt)
    yield handle, node, session_id, secret
    gate.touch()
    server.wait_state(handle.id, "succeeded", "failed", "cancelled")


def events_of(server, workflow_id, type_):
    from broker.persistence.models import Event

    with server.sessions()() as s:
        return s.execute(select(Event).where(Event.workflow_id == workflow_id, Event.type == type_)
                         .order_by(Event.id)).scalars().all()


def test_progress_and_outputs_become_events_and_success_ends_the_node_with_its_outputs(server, running):
    handle, node, session_id, secret = running
    elf = elf_client(server, session_id, secret)
    elf.updateNodeStatus(session_id, "PROGRESS 42.5 half way ☃", [{"name": "rows", "value": "1234"}])
    wait_for(lambda: events_of(server, handle.id, "NODE_PROGRESS"), what="the progress event")
    progress = events_of(server, handle.id, "NODE_PROGRESS")[-1]
    assert (progress.properties["percent"], progress.message) == (42.5, "half way ☃")
    outputs = events_of(server, handle.id, "NODE_OUTPUT")
    assert [(e.properties["name"], e.properties["value"]) for e in outputs] == [("rows", 1234)]
    elf.updateNodeStatus(session_id, "succeeded 0 all done", [{"name": "best", "value": '{"x": 1.5}'}])
    done = server.node(handle.id, "remote")  # committed when the call returned
    assert (done.state, done.exit_code, done.message) == ("succeeded", 0, "all done")
    assert done.outputs == {"rows": 1234, "best": {"x": 1.5}}
    assert server.wait_state(handle.id, "succeeded") == "succeeded"
    elf.updateNodeStatus(session_id, "SUCCEEDED", [])  # again: ignored, no fault
    elf.updateNodeStatus(session_id, "FAILED 3", [])  # too late: the node has ended
    assert server.node(handle.id, "remote").state == "succeeded"


def test_outputs_pushed_across_calls_stay_within_the_bounds_of_an_attempt(server, running):
    # 1,100 names over 11 calls, then 5 more with the end: the bound on output names (and bytes) holds across
    # calls as across reads of a payload's output; what is past it is counted in the node's message
    from broker.elf.elf import MAX_OUTPUT_NAMES

    handle, node, session_id, secret = running
    elf = elf_client(server, session_id, secret)
    for call in range(11):
        elf.updateNodeStatus(session_id, f"PROGRESS {call}",
                             [{"name": f"n{call * 100 + i}", "value": str(i)} for i in range(100)])
    elf.updateNodeStatus(session_id, "SUCCEEDED 0 done", [{"name": f"end{i}", "value": "1"} for i in range(5)])
    done = server.node(handle.id, "remote")
    assert done.state == "succeeded" and set(done.outputs) == {f"n{i}" for i in range(MAX_OUTPUT_NAMES)}
    # (the end's outputs come as reports too)
    assert done.message == ("done; 105 output reports ignored while it ran (past 1000 names or "
                            "16777216 bytes of them)")
    assert len(events_of(server, handle.id, "NODE_OUTPUT")) == MAX_OUTPUT_NAMES


def test_progress_pushed_in_a_loop_makes_one_event_per_report_interval_and_the_last_one_lands(server, running):
    # a payload holding its elf's session could push progress as fast as the API answers: an event each
    # would fill the event table; at most one per [engine] report_interval (0.5 s) is sent, the latest last
    handle, node, session_id, secret = running
    elf = elf_client(server, session_id, secret)
    started = time.monotonic()
    for i in range(100):
        elf.updateNodeStatus(session_id, f"PROGRESS {i}.5 step {i}", None)
    elapsed = time.monotonic() - started
    wait_for(lambda: (events := events_of(server, handle.id, "NODE_PROGRESS")) and events[-1].message == "step 99",
             what="the last progress pushed")
    events = events_of(server, handle.id, "NODE_PROGRESS")
    assert events[-1].properties["percent"] == 99.5
    assert len(events) <= elapsed / 0.5 + 2, (len(events), elapsed)


def test_a_failure_pushed_by_the_elf_fails_the_node_with_its_exit_code(server, running):
    handle, node, session_id, secret = running
    elf_client(server, session_id, secret).updateNodeStatus(session_id, "FAILED 7 disk full", None)
    failed = server.node(handle.id, "remote")
    assert (failed.state, failed.exit_code, failed.message) == ("failed", 7, "disk full")
    assert server.wait_state(handle.id, "failed") == "failed"
    assert server.node(handle.id, "next").state == "skipped"


def test_a_stale_attempt_is_ignored(server, running):
    from broker.persistence.elfsessions import create_session

    handle, node, _, _ = running
    stale_id, stale_secret = create_session(server.sessions(), node.id, node.attempt - 1)
    elf_client(server, stale_id, stale_secret).updateNodeStatus(stale_id, "FAILED 1", [{"name": "x", "value": "1"}])
    assert server.node(handle.id, "remote").state == "running"
    assert not events_of(server, handle.id, "NODE_OUTPUT")


def test_running_again_is_idempotent(server, running):
    handle, node, session_id, secret = running
    elf = elf_client(server, session_id, secret)
    elf.updateNodeStatus(session_id, "RUNNING", [])
    elf.updateNodeStatus(session_id, "running", [])
    assert server.node(handle.id, "remote").state == "running"


def test_wrong_secrets_user_passwords_and_bad_statuses_are_refused(server, running):
    handle, node, session_id, secret = running
    with pytest.raises(zeep.exceptions.Fault) as caught:
        elf_client(server, session_id, secret + "x").updateNodeStatus(session_id, "RUNNING", [])
    assert fault_code(caught) == "Client.InvalidCredentials"
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().updateNodeStatus(session_id, "RUNNING", [])  # alice's password is not a session
    assert fault_code(caught) == "Client.InvalidCredentials"
    elf = elf_client(server, session_id, secret)
    with pytest.raises(zeep.exceptions.Fault) as caught:
        elf.updateNodeStatus(session_id + 1, "RUNNING", [])
    assert fault_code(caught) == "Client.NotAuthorized"
    for status, outputs in (("EXPLODED", []), ("PROGRESS 101", []), ("PROGRESS x", []),
                            ("OUTPUT", [{"name": "bad name", "value": "1"}])):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            elf.updateNodeStatus(session_id, status, outputs)
        assert fault_code(caught) == "Client.InvalidArgument", status
    with pytest.raises(zeep.exceptions.Fault) as caught:
        elf.getStatusInfo(0)  # an elf session is not a user
    assert fault_code(caught) == "Client.InvalidCredentials"
    assert server.node(handle.id, "remote").state == "running"


def test_status_strings_parse_as_documented():
    from broker.api.push import parse_status

    assert parse_status(None).kind == "OUTPUT" and parse_status("  ").kind == "OUTPUT"
    assert parse_status("progress 12.5 copying files") == parse_status("PROGRESS 12.5 copying files")
    assert (parse_status("PROGRESS 12.5 copying").percent, parse_status("PROGRESS 12.5 copying").message) == \
        (12.5, "copying")
    assert (parse_status("FAILED 3 boom").exit_code, parse_status("FAILED 3 boom").message) == (3, "boom")
    assert (parse_status("FAILED boom").exit_code, parse_status("FAILED boom").message) == (None, "boom")
    assert parse_status("SUCCEEDED").exit_code is None and parse_status("CANCELLED by user").message == "by user"


def test_output_values_are_json_or_kept_as_strings():
    from broker.api.push import parse_outputs
    from broker.errors import LimitExceeded

    assert parse_outputs([("a", "[1, 2]"), ("b", "plain text"), ("c", "NaN")], 100) == \
        (("a", [1, 2]), ("b", "plain text"), ("c", "NaN"))
    with pytest.raises(LimitExceeded):
        parse_outputs([("a", json.dumps("x" * 200))], 100)
