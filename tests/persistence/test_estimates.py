"""Estimates read from the database (broker.persistence.estimates): what they read."""

from __future__ import annotations

from sqlalchemy import event, update

from broker.config import Settings
from broker.description.load import load_description
from broker.persistence import repository
from broker.persistence.estimates import estimate_workflow
from broker.persistence.models import Node

DOC = ('<workflow xmlns="urn:workflow-broker:workflow:1.0" name="first">'
       '<node id="a"><payload type="sh">true</payload></node>'
       '<node id="b"><dependsOn node="a"/><payload type="sh">true</payload></node></workflow>')


def test_a_first_run_with_nothing_ended_gets_no_estimate_without_its_nodes_being_read(engine, sessions):
    with sessions.begin() as s:
        wf_id = repository.submit_workflow(s, load_description(DOC.encode(), Settings()), descriptor=DOC,
                                           owner=repository.ensure_user(s, "tester")).id
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", seen)
    with sessions() as s:
        assert estimate_workflow(s, wf_id) is None
    assert statements and not [st for st in statements if "dependencies" in st], statements
    # once a node has ended, its own pace is something to go on: the run is read (and estimated)
    with sessions.begin() as s:
        s.execute(update(Node).where(Node.workflow_id == wf_id, Node.path == "a").values(state="failed"))
    statements.clear()
    with sessions() as s:
        estimate_workflow(s, wf_id)
    assert [st for st in statements if "dependencies" in st], statements
