"""Every core operation through zeep over real HTTP against ``broker serve``: results, faults, paging, unicode."""

from __future__ import annotations

import pytest
import zeep
from lxml import etree
from sqlalchemy import func, select

from tests.api.helpers import EXAMPLES, PAGE_SIZE, REPO, fault_code, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

HELLO = (EXAMPLES / "hello.xml").read_text(encoding="utf-8")
STATE_XSD = etree.XMLSchema(etree.parse(str(REPO / "schemas" / "workflow-state.xsd")))


def many(n: int, name: str = "many") -> str:
    return workflow("\n".join(f'<node id="n{i}"><payload type="sh">true</payload></node>' for i in range(n)), name)


def test_submit_returns_a_handle_of_a_committed_workflow_that_then_runs(server):
    from broker.persistence.models import Workflow

    handle = server.core().submit({"workflowContent": HELLO})
    assert handle.globalId.startswith("wf-") and handle.id > 0
    with server.sessions()() as s:
        row = s.get(Workflow, handle.id)
        assert row is not None and row.global_id == handle.globalId  # committed before the answer came
    assert server.wait_state(handle.id, "succeeded", "failed") == "succeeded"


def test_the_same_request_id_twice_returns_the_same_handle_and_one_workflow(server):
    from broker.persistence.models import Workflow

    first = server.core().submit({"workflowContent": HELLO, "id": "request-twice", "workflowId": "twice"})
    second = server.core().submit({"workflowContent": HELLO, "id": "request-twice", "workflowId": "twice"})
    assert (second.globalId, second.id, second.requestId) == (first.globalId, first.id, "request-twice")
    with server.sessions()() as s:
        assert s.execute(select(func.count()).select_from(Workflow)
                         .where(Workflow.request_id == "request-twice")).scalar_one() == 1


def test_a_label_already_used_by_the_user_is_refused_as_invalid_state(server):
    server.core().submit({"workflowContent": HELLO, "workflowId": "label-once"})
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit({"workflowContent": HELLO, "workflowId": "label-once"})
    assert fault_code(caught) == "Client.InvalidState"
    assert "label-once" in caught.value.message


def test_an_invalid_description_fault_carries_every_problem_with_its_line(server):
    bad = workflow("""
        <node id="a"><dependsOn node="missing"/><payload type="sh">true</payload></node>
        <node id="a"><payload type="sh">true</payload></node>
    """)
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit({"workflowContent": bad})
    assert fault_code(caught) == "Client.InvalidDescription"
    ns = {"b": "urn:workflow-broker:core:v1"}
    problems = [p.text for p in caught.value.detail.findall(".//b:problem", ns)]
    assert len(problems) >= 2
    assert all(p.startswith("<workflowContent>:") and p.split(":")[1].isdigit() for p in problems)
    assert {p.split(":")[1] for p in problems} == {"2", "3"}
    assert caught.value.detail.findtext(".//b:code", namespaces=ns) == "Client.InvalidDescription"


def test_submission_fields_override_the_description(server):
    from broker.persistence.models import Workflow

    handle = server.core().submit({"workflowContent": HELLO, "eventLevel": "debug", "priority": 7,
                                   "experimentId": "exp-42", "publishMetadataTo": "/topic/meta.test"})
    with server.sessions()() as s:
        row = s.get(Workflow, handle.id)
        assert (row.event_level, row.priority, row.experiment_id, row.publish_metadata_to) == \
            (4, 7, "exp-42", "/topic/meta.test")


def test_an_unknown_event_level_is_an_invalid_argument(server):
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit({"workflowContent": HELLO, "eventLevel": "LOUD"})
    assert fault_code(caught) == "Client.InvalidArgument"


def test_a_submission_without_content_or_url_is_an_invalid_argument(server):
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit({"workflowId": "empty"})
    assert fault_code(caught) == "Client.InvalidArgument"


def test_a_workflow_url_is_fetched_only_under_an_allowed_location(server, tmp_path):
    inside = server.allowed / "hello.xml"
    inside.write_text(HELLO, encoding="utf-8")
    handle = server.core().submit({"workflowUrl": inside.as_uri()})
    assert server.wait_state(handle.id, "succeeded", "failed") == "succeeded"
    outside = tmp_path / "hello.xml"
    outside.write_text(HELLO, encoding="utf-8")
    for url in (outside.as_uri(), inside.as_uri().replace("/allowed/", "/allowed/../"), "http://127.0.0.1:9/x"):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            server.core().submit({"workflowUrl": url})
        assert fault_code(caught) == "Client.InvalidArgument", url
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit({"workflowUrl": (server.allowed / "absent.xml").as_uri()})
    assert fault_code(caught) == "Client.NotFound"


def test_unicode_survives_the_round_trip(server):
    text = workflow('<node id="u"><payload type="sh">echo "Zürich ☃ 𝄞 ﬁ"</payload></node>', name="ünïcödé ☃ 𝄞")
    handle = server.core().submit({"workflowContent": text, "workflowId": "étiquette ☃ 𝄞"})
    assert handle.label == "étiquette ☃ 𝄞"
    assert server.core().getDescriptorAsXml(handle.id) == text
    server.wait_state(handle.id, "succeeded", "failed")
    document = etree.fromstring(server.core().getWorkflowAsXml(handle.id).encode("utf-8"))
    assert document.get("name") == "ünïcödé ☃ 𝄞" and document.get("label") == "étiquette ☃ 𝄞"


def test_a_large_description_comes_back_whole(server):
    big = "x" * 900_000
    text = workflow(f'<node id="big"><payload type="sh">: {big}</payload></node>', name="big")
    handle = server.core().submit({"workflowContent": text})
    assert server.core().getDescriptorAsXml(handle.id) == text


def test_workflow_xml_follows_the_schema_and_nests_sweep_members(server):
    handle = server.core().submit({"workflowContent": (EXAMPLES / "sweep.xml").read_text(encoding="utf-8")})
    server.wait_state(handle.id, "succeeded", "failed")
    document = etree.fromstring(server.core().getWorkflowAsXml(handle.id).encode("utf-8"))
    STATE_XSD.assertValid(document)
    ns = {"s": "urn:workflow-broker:state:1"}
    members = document.findall("s:node/s:node[@kind='member']", ns)
    assert members and all(m.find("s:binding", ns) is not None for m in members)
    sweep = document.find("s:node[@kind='sweep']", ns)
    node_doc = etree.fromstring(server.core().getNodeAsXml(int(sweep.get("id"))).encode("utf-8"))
    STATE_XSD.assertValid(node_doc)
    assert len(node_doc.findall("s:node/s:node", ns)) == len(members)
    assert node_doc.get("workflowGlobalId") == handle.globalId


def test_unknown_ids_are_not_found(server):
    core = server.core()
    for call in (lambda: core.getWorkflowAsXml(999_999), lambda: core.getNodeAsXml(999_999),
                 lambda: core.getDescriptorAsXml(999_999), lambda: core.getStatusInfoForId("wf-0000000000000000zz"),
                 lambda: core.getStatusInfoForId("not an id"), lambda: server.core("root").getStateForUser("nobody")):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            call()
        assert fault_code(caught) == "Client.NotFound"


def test_status_of_a_workflow_and_of_a_node_by_global_id(server):
    handle = server.core().submit({"workflowContent": HELLO})
    server.wait_state(handle.id, "succeeded")
    status = server.core().getStatusInfoForId(handle.globalId)
    assert (status.state, status.type, status.progress, status.workflowId) == ("succeeded", "WORKFLOW_STATE", 100.0,
                                                                               handle.id)
    node = server.core().getStatusInfoForId(handle.globalId + "/hello")
    assert (node.state, node.type, node.nodePath, node.progress) == ("succeeded", "NODE_STATE", "hello", 100.0)
    assert 0 < node.eventId <= status.eventId


def test_events_are_paged_by_last_id_without_gaps_or_repeats(server):
    from broker.persistence.models import Event, User, Workflow

    start = _last_event_id(server)
    handle = server.core().submit({"workflowContent": many(12)})
    server.wait_state(handle.id, "succeeded")
    seen, last, pages = [], start, 0
    while True:
        page = server.core().getStatusInfo(last)
        if not page:  # no element at all: zeep gives None or []
            break
        pages += 1
        assert len(page) <= PAGE_SIZE
        seen.extend(e.eventId for e in page)
        last = page[-1].eventId
    assert seen == sorted(set(seen)) and pages > 1
    with server.sessions()() as s:
        expected = s.execute(select(Event.id).join(Workflow, Workflow.id == Event.workflow_id)
                             .join(User, User.id == Workflow.owner_id)
                             .where(User.name == "alice", Event.id > start, Event.id <= last)
                             .order_by(Event.id)).scalars().all()
    assert seen == expected


def test_a_user_s_events_and_summary_and_the_empty_results(server):
    core = server.core()
    assert not core.getStatusInfo(2**62)  # xs:long: beyond 2**31 is fine
    assert not server.core("bob").getStatusInfoForUser("bob", 0)
    summary = server.core("bob").getStateForUser(None)
    assert summary.user == "bob" and not summary.workflows and not summary.nodes
    alice = core.getStateForUser("alice")
    assert alice.user == "alice" and sum(c.count for c in alice.workflows) >= 1
    events = core.getStatusInfoForUser(None, 0)
    assert events and all(e.workflowGlobalId for e in events)


def test_delete_all_for_user_removes_finished_workflows_and_skips_running_ones(server, tmp_path):
    from tests.api.helpers import waits_for

    gate = tmp_path / "go"
    running = server.core("bob").submit({"workflowContent": workflow(f'<node id="w">{waits_for(gate)}</node>')})
    done = server.core("bob").submit({"workflowContent": HELLO})
    server.wait_state(done.id, "succeeded")
    server.core("bob").deleteAllForUser("bob")
    with pytest.raises(zeep.exceptions.Fault):
        server.core("bob").getWorkflowAsXml(done.id)
    from tests.api.helpers import all_events

    report = [e for e in all_events(server) if e.type == "ADMIN_ACTION"][-1]
    assert report.actor == "user:bob" and running.globalId in report.message and "skipped 1" in report.message
    assert server.core("bob").getStatusInfoForId(running.globalId).state in ("accepted", "running")
    gate.touch()
    server.wait_state(running.id, "succeeded")
    server.core("bob").deleteAllForUser(None)
    assert not server.core("bob").getStateForUser(None).workflows


def _last_event_id(server) -> int:
    from broker.persistence.models import Event

    with server.sessions()() as s:
        return s.execute(select(func.coalesce(func.max(Event.id), 0))).scalar_one()


def test_a_progress_message_with_a_control_character_reaches_the_client_with_it_replaced(server):
    # JSON lets a payload send any character; XML 1.0 cannot carry U+0001 (spyne answered an empty envelope)
    doc = workflow('<node id="p"><payload type="sh">echo \'@broker progress 50 "bad \\u0001 char"\'</payload></node>')
    handle = server.core().submit({"workflowContent": doc})
    server.wait_state(handle.id, "succeeded")
    events = []
    last = 0
    while page := server.core().getStatusInfo(last):
        events.extend(page)
        last = page[-1].eventId
    progress = [e for e in events if e.type == "NODE_PROGRESS" and e.workflowId == handle.id]
    assert [(e.progress, e.message) for e in progress] == [(50.0, "bad \ufffd char")]


# ------------------------------------------------------------------- cancel and restart of one's own work

def _gated(gate) -> str:
    from tests.api.helpers import waits_for

    return workflow(f'<node id="wait">{waits_for(gate)}</node>'
                    '<node id="after"><dependsOn node="wait"/><payload type="sh">true</payload></node>')


def test_a_user_cancels_and_restarts_their_own_workflow_and_nodes_through_the_core_service(server, tmp_path):
    from tests.fixtures import wait_for

    gate = tmp_path / "go"
    handle = server.core("alice").submit({"workflowContent": _gated(gate)})
    wait_for(lambda: server.node(handle.id, "wait").state == "running", what="the node to run")
    server.core("alice").cancel(handle.globalId + "/wait")
    assert server.wait_state(handle.id, "cancelled", "failed")
    assert server.node(handle.id, "after").state == "skipped"
    gate.touch()
    server.core("alice").restart(handle.globalId)
    wait_for(lambda: server.node(handle.id, "wait").attempt == 2, what="the cancelled node's second attempt")
    assert server.wait_state(handle.id, "succeeded") == "succeeded"
    other = server.core("alice").submit({"workflowContent": _gated(tmp_path / "never")})
    server.core("alice").cancel(other.globalId)
    assert server.wait_state(other.id, "cancelled") == "cancelled"


def test_another_user_s_workflow_cannot_be_cancelled_and_looks_like_one_that_does_not_exist(server, tmp_path):
    handle = server.core("alice").submit({"workflowContent": _gated(tmp_path / "never")})
    missing = "wf-0000000000000000zz"
    for operation in ("cancel", "restart"):
        faults = []
        for target in (handle.globalId, handle.globalId + "/wait", missing):
            with pytest.raises(zeep.exceptions.Fault) as caught:
                getattr(server.core("bob"), operation)(target)
            faults.append((fault_code(caught), caught.value.message.replace(handle.globalId, missing)))
        assert faults == [("Client.NotFound", f"no workflow {missing}")] * 3, faults
    assert server.workflow_state(handle.id) not in ("cancelled",)
    server.admin().cancel(handle.globalId)  # an admin may, through /admin and through /broker
    assert server.wait_state(handle.id, "cancelled") == "cancelled"
