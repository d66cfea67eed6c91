"""Every admin operation through zeep against ``broker serve``: cancel, restart, deletes, service state."""

from __future__ import annotations

import time

import pytest
import zeep

from tests.api.helpers import EXAMPLES, all_events, fault_code, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

HELLO = (EXAMPLES / "hello.xml").read_text(encoding="utf-8")
FAILING = (EXAMPLES / "failing.xml").read_text(encoding="utf-8")


def gated(gate, name: str = "gated") -> str:
    return workflow(f'<node id="wait">{waits_for(gate)}</node>'
                    '<node id="after"><dependsOn node="wait"/><payload type="sh">true</payload></node>', name)


def unpublished(server) -> int:
    """Outbox rows not yet published, read from the server's database."""
    from broker.persistence.queries import outbox_backlog

    with server.sessions()() as s:
        return outbox_backlog(s)


def test_service_state_shows_hosts_with_jobs_in_flight_backlog_and_uptime(server, tmp_path):
    gate = tmp_path / "go"
    handle = server.core().submit({"workflowContent": gated(gate)})
    wait_for(lambda: server.node(handle.id, "wait").state == "running", what="the node to run")
    state = server.admin().getServiceState()
    assert [(h.host, h.jobs) for h in state.hosts] == [("localhost", 1)]
    # no bus in this server: no outbox rows are written at all (events of a run without a bus are never
    # published), so the backlog is zero and agrees with the database
    assert state.outboxBacklog == unpublished(server) == 0
    assert state.uptimeSeconds > 0 and state.user is None
    assert {c.state for c in state.workflows} >= {"running"}
    gate.touch()
    server.wait_state(handle.id, "succeeded")
    assert not server.admin().getServiceState().hosts


@pytest.fixture
def server_with_bus_down(tmp_path, sqlite_template):
    """A server whose bus never answers (the discard port): every event waits in the outbox."""
    import shutil

    from tests.api.helpers import Server, add_users

    db = tmp_path / "broker.db"
    shutil.copy(sqlite_template, db)
    add_users(f"sqlite:///{db}")
    srv = Server(f"sqlite:///{db}", tmp_path, {"BROKER_EVENTS_URL": "stomp://127.0.0.1:9"}).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def test_service_state_counts_the_outbox_rows_a_bus_outage_leaves_unsent(server_with_bus_down):
    server = server_with_bus_down
    handle = server.core().submit({"workflowContent": HELLO})
    server.wait_state(handle.id, "succeeded")
    before = unpublished(server)
    backlog = server.admin().getServiceState().outboxBacklog
    assert 0 < before <= backlog <= unpublished(server)


def test_user_info_lists_every_user_with_their_workflows(server):
    server.core("bob").submit({"workflowContent": HELLO})
    info = {u.user: u for u in server.admin().getUserInfo()}
    assert set(info) == {"alice", "bob", "root"}
    assert info["root"].admin and not info["bob"].admin
    assert info["bob"].total >= 1 and info["bob"].lastSubmitted is not None


def test_cancel_of_a_node_skips_its_dependants_and_cancel_of_a_workflow_ends_it(server, tmp_path):
    handle = server.core().submit({"workflowContent": gated(tmp_path / "never")})
    wait_for(lambda: server.node(handle.id, "wait").state == "running", what="the node to run")
    server.admin().cancel(handle.globalId + "/wait")
    assert server.wait_state(handle.id, "cancelled", "failed")
    assert server.node(handle.id, "after").state == "skipped"
    other = server.core().submit({"workflowContent": gated(tmp_path / "never", "other")})
    server.admin().cancel(other.globalId)
    assert server.wait_state(other.id, "cancelled") == "cancelled"
    actions = [(e.actor, e.message, e.properties["role"]) for e in admin_actions(server)
               if e.properties.get("operation") == "cancel"]
    assert actions[-2:] == [("admin:root", f"cancel of {handle.globalId}/wait by admin root", "admin"),
                            ("admin:root", f"cancel of {other.globalId} by admin root", "admin")]


def test_restart_gives_failed_nodes_a_fresh_attempt(server):
    handle = server.core().submit({"workflowContent": FAILING})
    server.wait_state(handle.id, "failed")
    assert server.node(handle.id, "broken").attempt == 1
    server.admin().restart(handle.globalId)
    wait_for(lambda: server.node(handle.id, "broken").attempt == 2 and server.workflow_state(handle.id) == "failed",
             what="the restarted node to fail again")
    server.admin().restart(handle.globalId + "/broken")
    wait_for(lambda: server.node(handle.id, "broken").attempt == 3, what="the restarted node's third attempt")
    actions = [(e.actor, e.message, e.properties["nodes"]) for e in admin_actions(server)
               if e.properties.get("operation") == "restart"]
    # broken and the two dependants it had caused to be skipped, each time
    assert actions[-2:] == [("admin:root", f"restart of {handle.globalId} by admin root", 3),
                            ("admin:root", f"restart of {handle.globalId}/broken by admin root", 3)]


def admin_actions(server) -> list:
    from sqlalchemy import select

    from broker.persistence.models import Event

    with server.sessions()() as s:
        return list(s.scalars(select(Event).where(Event.type == "ADMIN_ACTION").order_by(Event.id)))


def test_cancel_and_restart_of_unknown_ids_are_not_found(server):
    for call in (lambda: server.admin().cancel("wf-0000000000000000zz"),
                 lambda: server.admin().restart("wf-0000000000000000zz/x"), lambda: server.admin().cancel("junk"),
                 lambda: server.admin().delete("wf-0000000000000000zz")):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            call()
        assert fault_code(caught) == "Client.NotFound"


def test_delete_refuses_a_running_workflow_and_deletes_a_finished_one(server, tmp_path):
    gate = tmp_path / "go"
    handle = server.core().submit({"workflowContent": gated(gate)})
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.admin().delete(handle.globalId)
    assert fault_code(caught) == "Client.InvalidState"
    gate.touch()
    server.wait_state(handle.id, "succeeded")
    server.admin().delete(handle.globalId)
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().getStatusInfoForId(handle.globalId)
    assert fault_code(caught) == "Client.NotFound"


def test_delete_all_before_compares_the_finish_time_and_records_what_it_deleted(server, tmp_path):
    old = server.core().submit({"workflowContent": HELLO})
    server.wait_state(old.id, "succeeded")
    cutoff = int(time.time() * 1000) + 1
    wait_for(lambda: time.time() * 1000 > cutoff + 5, what="the clock to pass the cut-off", interval=0.005)
    new = server.core().submit({"workflowContent": HELLO})
    server.wait_state(new.id, "succeeded")
    server.admin().deleteAllBefore(cutoff)
    with pytest.raises(zeep.exceptions.Fault):
        server.core().getStatusInfoForId(old.globalId)
    assert server.core().getStatusInfoForId(new.globalId).state == "succeeded"
    events = all_events(server)
    report = [e for e in events if e.type == "ADMIN_ACTION" and "deleteAllBefore" in (e.message or "")]
    assert report and report[-1].actor == "admin:root"
    properties = {p.name: p.value for p in report[-1].properties}
    assert old.globalId in properties["deleted_ids"] and new.globalId not in properties["deleted_ids"]


def test_delete_all_completed_skips_running_workflows(server, tmp_path):
    gate = tmp_path / "go"
    running = server.core().submit({"workflowContent": gated(gate)})
    done = server.core().submit({"workflowContent": HELLO})
    server.wait_state(done.id, "succeeded")
    server.admin().deleteAllCompleted()
    with pytest.raises(zeep.exceptions.Fault):
        server.core().getStatusInfoForId(done.globalId)
    assert server.core().getStatusInfoForId(running.globalId).state in ("accepted", "running")
    gate.touch()
    server.wait_state(running.id, "succeeded")


def test_archive_refuses_a_selection_that_is_not_an_archive_document(server):
    # the archive operation itself is tested in tests/admin/test_api.py
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core("root").archiveWorkflowsTo("file:///tmp/archive", "<config/>")
    assert fault_code(caught) == "Client.InvalidArgument"
    assert "invalid archive selection" in caught.value.message


def _operations(server, path: str) -> set[str]:
    return {name for service in server.client(path).wsdl.services.values() for port in service.ports.values()
            for name in port.binding._operations}


def test_the_admin_service_offers_every_core_operation_to_admins_only(server):
    assert _operations(server, "/broker") < _operations(server, "/admin")  # IBroker extends IBrokerCore
    admin = server.admin()
    handle = admin.submit({"workflowContent": HELLO, "user": "alice"})
    server.wait_state(handle.id, "succeeded")
    assert "<workflow" in admin.getWorkflowAsXml(handle.id)
    assert admin.getStatusInfoForId(handle.globalId).state == "succeeded"
    assert admin.getStatusInfo(0)  # a page of everyone's events
    assert admin.getStateForUser("alice").user == "alice"
    for call in (lambda s: s.getStateForUser(None), lambda s: s.getWorkflowAsXml(handle.id),
                 lambda s: s.submit({"workflowContent": HELLO})):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            call(server.admin("alice"))
        assert fault_code(caught) == "Client.NotAuthorized"
