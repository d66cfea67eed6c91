"""``broker.client`` against a real ``broker serve``: every method, the fault mapping, paging, waiting, admin."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import socket

import pytest
import zeep.exceptions

from broker import errors as broker_errors
from broker.client import (AdminClient, Client, ConnectionFailed, InvalidArgument, InvalidCredentials,
                           InvalidDescription, InvalidState, NotAuthorized, NotFound, WaitTimeout)
from tests.api.helpers import EXAMPLES, PAGE_SIZE, REPO, USERS, waits_for, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

DIAMOND = EXAMPLES / "diamond.xml"


def client(server, user: str = "alice") -> Client:
    return Client(server.base, user, USERS[user][0])


def admin(server) -> AdminClient:
    return AdminClient(server.base, "root", USERS["root"][0])


def counting(c: Client) -> list[str]:
    """The operations ``c`` calls from now on, in order."""
    calls: list[str] = []
    real = c._connection.call

    def call(operation, *args, **kwargs):
        calls.append(operation)
        return real(operation, *args, **kwargs)

    c._connection.call = call
    return calls


def test_submit_wait_with_progress_then_outputs_nodes_and_descriptor(server):
    with client(server) as alice:
        wf = alice.submit(DIAMOND, label="diamond-1", priority=7)
        assert wf.global_id.startswith("wf-") and wf.label == "diamond-1" and wf.id > 0
        seen = []
        final = wf.wait(timeout=120, on_progress=seen.append)
        assert final.state == "succeeded" and final.done and final.progress == 100.0
        assert seen[-1] == final and seen[0].state in ("accepted", "running", "succeeded")
        # called for each change only, never twice for the same status
        assert all((a.state, a.progress, a.message) != (b.state, b.progress, b.message) for a, b in zip(seen, seen[1:]))
        assert wf.outputs("split") == {"parts": 2} and wf.outputs("join") == {}
        nodes = {n.path: n for n in wf.nodes()}
        assert set(nodes) == {"split", "left", "right", "join"}
        assert all(n.state == "succeeded" and n.global_id == f"{wf.global_id}/{n.path}" for n in nodes.values())
        assert nodes["split"].finished.tzinfo == dt.timezone.utc and nodes["split"].exit_code == 0
        assert 'priority="7"' in wf.xml() and 'label="diamond-1"' in wf.xml()
        assert wf.descriptor() == DIAMOND.read_text(encoding="utf-8")
        assert alice.workflow(wf.global_id) == wf
        assert wf.status("split").state == "succeeded" and wf.status("split").node_path == "split"
        with pytest.raises(NotFound, match="no node 'nowhere'"):
            wf.outputs("nowhere")


def test_submit_takes_the_text_and_a_request_id_given_twice_is_one_workflow(server):
    text = workflow('<node id="a"><payload type="sh">echo \'@broker output n=1\'</payload></node>', "text")
    with client(server) as alice:
        first = alice.submit(text, request_id="client-req-1", event_level="DEBUG")
        again = alice.submit(text, request_id="client-req-1", event_level="DEBUG")
        assert again == first and again.request_id == "client-req-1"
        assert first.wait(timeout=120).state == "succeeded" and first.outputs("a") == {"n": 1}


def test_events_page_by_last_id_across_several_pages_and_start_after_an_id(server):
    with client(server) as alice:
        wf = alice.submit(DIAMOND)
        wf.wait(timeout=120)
        for _ in range(3):  # alice's later workflows: their events are not read to list wf's
            alice.submit(DIAMOND).wait(timeout=120)
        calls = counting(alice)
        events = list(wf.events())
        assert set(calls) == {"getStatusInfoForWorkflow"}
        # its own pages only (the last one empty), not every page of alice's four workflows
        assert len(events) > 2 * PAGE_SIZE and len(calls) == -(-len(events) // PAGE_SIZE) + 1
        ids = [e.id for e in events]
        assert ids == sorted(set(ids)) and all(e.workflow_global_id == wf.global_id for e in events)
        assert events[0].type == "WORKFLOW_SUBMITTED" and events[-1].state == "succeeded"
        output = next(e for e in events if e.type == "NODE_OUTPUT")
        assert output.node_path == "split" and output.properties["name"] == "parts" and output.properties["value"] == 2
        later = list(wf.events(after=ids[4]))
        assert [e.id for e in later] == ids[5:]


def test_wait_gives_up_with_the_last_status_then_cancel_and_restart(server, tmp_path):
    gate = tmp_path / "gate"
    text = workflow(f'<node id="held">{waits_for(gate, 120)}</node>'
                    '<node id="after"><dependsOn node="held"/><payload type="sh">true</payload></node>', "held")
    with client(server) as alice:
        wf = alice.submit(text)
        with pytest.raises(WaitTimeout) as timed_out:
            wf.wait(timeout=0.5)
        assert isinstance(timed_out.value, TimeoutError) and timed_out.value.status.state in ("accepted", "running")
        wf.cancel()
        assert wf.wait(timeout=120).state == "cancelled"
        assert {n.path: n.state for n in wf.nodes()} == {"held": "cancelled", "after": "cancelled"}
        gate.touch()
        wf.restart()
        assert wf.wait(timeout=120).state == "succeeded"


def test_cancel_of_one_node_skips_its_dependants(server, tmp_path):
    text = workflow(f'<node id="held">{waits_for(tmp_path / "never", 120)}</node>'
                    '<node id="after"><dependsOn node="held"/><payload type="sh">true</payload></node>', "node")
    with client(server) as alice:
        wf = alice.submit(text)
        wf.cancel("held")
        assert wf.wait(timeout=120).state in ("failed", "cancelled")
        assert {n.path: n.state for n in wf.nodes()} == {"held": "cancelled", "after": "skipped"}


def test_bob_cannot_see_or_touch_alices_workflow(server):
    with client(server) as alice, client(server, "bob") as bob:
        wf = alice.submit(EXAMPLES / "hello.xml")
        wf.wait(timeout=120)
        theirs = type(wf)(bob, wf.global_id, wf.id)
        for attempt in (lambda: bob.workflow(wf.global_id), theirs.status, theirs.nodes, theirs.descriptor,
                        lambda: list(theirs.events()), theirs.cancel, theirs.restart):
            with pytest.raises(NotFound) as found:
                attempt()
            assert found.value.code == "Client.NotFound" and "alice" not in str(found.value)
        assert all(e.workflow_global_id != wf.global_id for e in bob.events())
        with pytest.raises(NotAuthorized):
            bob.summary(user="alice")


def test_faults_become_the_clients_own_errors_never_zeeps(server):
    with client(server) as alice:
        with pytest.raises(InvalidDescription) as invalid:
            alice.submit(workflow('<node id="a"><dependsOn node="missing"/><payload type="sh">true</payload></node>'))
        assert invalid.value.code == "Client.InvalidDescription" and invalid.value.problems
        assert all(p.startswith("<workflowContent>:") for p in invalid.value.problems)
        with pytest.raises(InvalidArgument):
            alice.submit(EXAMPLES / "hello.xml", priority=2_000_000)
        with pytest.raises(InvalidArgument, match="not both"):
            alice.submit(EXAMPLES / "hello.xml", url="http://example.invalid/x.xml")
        with pytest.raises(InvalidArgument, match="cannot read"):
            alice.submit(EXAMPLES / "no-such-file.xml")
        with pytest.raises(NotAuthorized) as not_admin:
            alice.archive("file:///tmp/x", "<selection/>")
        assert isinstance(not_admin.value, broker_errors.NotAuthorized)
    with pytest.raises(InvalidCredentials):
        Client(server.base, "alice", "wrong").status("wf-x")
    with pytest.raises(NotAuthorized):
        AdminClient(server.base, "alice", USERS["alice"][0]).users()
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ConnectionFailed) as refused:
        Client(f"http://127.0.0.1:{port}", "alice", "x").status("wf-x")
    assert not isinstance(refused.value, zeep.exceptions.Error)


def test_one_connection_is_reused_and_the_password_is_never_logged(server, caplog):
    password = USERS["alice"][0]
    secret_forms = (password, base64.b64encode(f"alice:{password}".encode()).decode())
    caplog.set_level(logging.DEBUG)
    with client(server) as alice:
        wf = alice.submit(EXAMPLES / "hello.xml")
        for _ in range(5):
            wf.status()
        pools = alice._connection.transport.session.get_adapter(server.base).poolmanager.pools
        assert [pools[key].num_connections for key in pools.keys()] == [1]
        assert not any(s in repr(alice) for s in secret_forms)
    assert caplog.text and not any(s in caplog.text for s in secret_forms)


def test_admin_calls(server):
    with client(server) as alice, admin(server) as root:
        done = alice.submit(EXAMPLES / "hello.xml")
        done.wait(timeout=120)
        users = {u.user: u for u in root.users()}
        assert users["root"].admin and not users["alice"].admin and users["alice"].total >= 1
        state = root.service_state()
        assert state.user is None and state.version and state.uptime_seconds > 0
        assert root.summary(user="alice").workflows["succeeded"] >= 1
        assert root.workflow(done.global_id).status().state == "succeeded"  # anyone's, and the core calls too
        assert any(e.workflow_global_id == done.global_id for e in root.events())
        running = alice.submit(workflow(f'<node id="a">{waits_for(server.tmp / "never-created", 120)}</node>'))
        with pytest.raises(InvalidState):
            root.delete(running.global_id)
        root.workflow(running.global_id).cancel()
        running.wait(timeout=120)
        root.delete(done.global_id)
        with pytest.raises(NotFound):
            done.status()
        with pytest.raises(InvalidArgument, match="aware"):
            root.delete_all_before(dt.datetime(2000, 1, 1))
        root.delete_all_before(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
        assert running.status().state == "cancelled"  # finished after 2000: kept
        root.delete_all_completed()
        with pytest.raises(NotFound):
            running.status()


def test_the_readme_example_runs_as_written(server, capsys, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python client"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(REPO)
    exec(example.replace("http://broker.example:8080", server.base), {"password": USERS["alice"][0]})
    out = capsys.readouterr().out
    assert "succeeded\n{'parts': 2}\n" in out and "\ncancelled\n" in out
    assert "Client.NotFound no workflow wf-01jd3k2m9x7q4tz8ha" in out
