"""Attempts and completion estimates through the SOAP API (zeep over real HTTP against ``broker serve``):
getNodeAsXml lists every attempt; getStatusInfoForId carries an optional estimate (documented widenings)."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.api.helpers import REPO, workflow

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
