"""A workflow stored before node ids had to be path-safe keeps running (issue 12, section 2): its ``-rf`` node runs
in ``<workflow>/-rf``, and its ``..`` node is refused by the work-directory builder instead of running in the
directory every workflow shares."""

from __future__ import annotations

import pytest

from broker.description.build import build_spec
from broker.description.xmlsafe import parse_document
from broker.states import WorkflowState
from tests.engine.helpers import workflow


@pytest.mark.slow
def test_a_stored_workflow_with_unsafe_ids_runs_its_safe_nodes_and_refuses_the_escaping_one(broker, tmp_path):
    document = workflow("""
        <node id="-rf"><payload type="sh">echo ran > here</payload></node>
        <node id=".."><payload type="sh">echo escaped > here</payload></node>
        <node id="after"><dependsOn node="-rf"/><payload type="sh">true</payload></node>""")
    # as stored before the rule: built without the XSD's id pattern, never checked again when loaded
    spec, problems = build_spec(parse_document(document, broker.settings.limits), broker.settings)
    assert problems == []
    accepted = broker.engine.submit(spec, document.decode(), "alice")
    assert broker.wait(accepted.workflow_id) is WorkflowState.FAILED
    nodes = broker.nodes(accepted.workflow_id)
    assert {path: n.state for path, n in nodes.items()} == {"-rf": "succeeded", "..": "failed", "after": "succeeded"}
    work = tmp_path / "work"
    assert (work / accepted.global_id / "-rf" / "1" / "here").read_text() == "ran\n"
    refusals = [e.message for e in broker.events(accepted.workflow_id)
                if e.node_path == ".." and "is not inside its workflow's directory" in (e.message or "")]
    assert len(refusals) == 1
    # nothing next to the workflow (but the resident agents' own directory, .agents)
    assert sorted(p.name for p in work.iterdir() if p.name != ".agents") == [accepted.global_id]
