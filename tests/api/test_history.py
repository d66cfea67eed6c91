"""Attempts and completion estimates through the SOAP API (zeep over real HTTP against ``broker serve``):
getNodeAsXml lists every attempt; getStatusInfoForId carries an optional estimate (documented widenings)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from lxml import etree

from tests.api.helpers import REPO, USERS, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

STATE_XSD = etree.XMLSchema(etree.parse(str(REPO / "schemas" / "workflow-state.xsd")))
NS = {"s": "urn:workflow-broker:state:1"}


def test_node_xml_lists_every_attempt_with_its_outcome_and_follows_the_schema(server):
    text = workflow('<node id="flaky"><execution><retry count="2" backoff="10ms"/></execution>'
                    '<payload type="sh">test "$WB_ATTEMPT" -ge 3 || { echo "no &lt;luck&gt;" &gt;&amp;2; exit 5; }'
                    '</payload></node>', name="attempts")
    handle = server.core().submit({"workflowContent": text})
    assert server.wait_state(handle.id, "succeeded", "failed") == "succeeded"
    node = server.node(handle.id, "flaky")
    document = etree.fromstring(server.core().getNodeAsXml(node.id).encode("utf-8"))
    STATE_XSD.assertValid(document)
    attempts = document.findall("s:node/s:attempt", NS)
    assert [(a.get("number"), a.get("outcome"), a.get("exitCode")) for a in attempts] == [
        ("1", "failed", "5"), ("2", "failed", "5"), ("3", "succeeded", "0")]
    assert [a.findtext("s:message", namespaces=NS) for a in attempts[:2]] == ["exit code 5", "exit code 5"]
    for number, attempt in enumerate(attempts, 1):
        assert attempt.get("workdir").endswith(f"/flaky/{number}") and attempt.get("jobId")
        assert attempt.get("queued") <= attempt.get("started") <= attempt.get("finished")
    # the workflow's own XML stays as it was: attempts are asked for per node
    whole = etree.fromstring(server.core().getWorkflowAsXml(handle.id).encode("utf-8"))
    STATE_XSD.assertValid(whole)
    assert whole.findall(".//s:attempt", NS) == []


def _run_twice_then_hold(server, tmp_path, name: str):
    """Two finished runs of a workflow (its history), then a third whose node waits for a gate."""
    quick = workflow('<node id="step"><payload type="sh">sleep 0.3</payload></node>', name=name)
    for _ in range(2):
        done = server.core().submit({"workflowContent": quick})
        assert server.wait_state(done.id, "succeeded", "failed") == "succeeded"
    gate = tmp_path / f"{name}.gate"
    held = server.core().submit({"workflowContent": workflow(f'<node id="step">{waits_for(gate)}</node>', name=name)})
    wait_for(lambda: server.node(held.id, "step").state == "running", what="the third run's node to run")
    return held, gate


def test_status_of_a_running_workflow_and_node_carries_their_estimated_end(server, tmp_path):
    held, gate = _run_twice_then_hold(server, tmp_path, "estimated")
    try:
        for target in (held.globalId, f"{held.globalId}/step"):
            assert server.core().getStatusInfoForId(target).estimatedEnd is None  # only when asked
            info = server.core().getStatusInfoForId(target, True)
            end = info.estimatedEnd
            assert end is not None, target
            assert end.p10 <= end.p50 <= end.p90 and end.basis >= 2
            # two earlier attempts of about 0.3 s: the median end is seconds away, not minutes
            assert end.p50 - info.time < dt.timedelta(seconds=30)
    finally:
        gate.touch()
    assert server.wait_state(held.id, "succeeded", "failed") == "succeeded"
    assert server.core().getStatusInfoForId(held.globalId, True).estimatedEnd is None  # ended: nothing left


def test_a_client_made_from_the_wsdl_before_the_estimate_still_reads_the_status(server, tmp_path):
    import requests
    import zeep
    from zeep.transports import Transport

    held, gate = _run_twice_then_hold(server, tmp_path, "old-client")
    try:
        text = (REPO / "wsdl" / "broker-core.wsdl").read_text(encoding="utf-8")
        old = re.sub(r'\s*<xs:element name="(estimatedEnd|estimate)"[^>]*/>', "", text)
        assert text.count("estimate") > old.count("estimate")
        path = tmp_path / "broker-core-v1.wsdl"
        path.write_text(old, encoding="utf-8")
        session = requests.Session()
        session.auth = ("alice", USERS["alice"][0])
        client = zeep.Client(str(path), transport=Transport(session=session))  # zeep's default: strict
        service = client.create_service("{urn:workflow-broker:core:v1}IBrokerCore", server.base + "/broker")
        info = service.getStatusInfoForId(held.globalId)
        assert (info.globalId, info.state) == (held.globalId, "running")
        assert server.core().getStatusInfoForId(held.globalId, True).estimatedEnd is not None  # a new client's
    finally:
        gate.touch()
