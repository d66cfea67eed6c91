"""An archived workflow keeps where it came from: the stored workflow's name and version and its arguments,
in the archive's state document (valid against schemas/workflow-state.xsd)."""

from __future__ import annotations

import pytest
from lxml import etree

from broker.admin.reader import read_archive, record_schema
from broker.admin.targets import FileTarget
from tests.admin.helpers import workflow

pytestmark = pytest.mark.slow  # runs `broker` commands as processes

STATE = "{urn:workflow-broker:state:1}"


def test_an_archive_records_the_stored_workflow_and_arguments_a_workflow_came_from(sqlite_admin_cli):
    cli = sqlite_admin_cli
    doc = cli.file("greet.xml", workflow("""
        <parameters><parameter name="who" type="string" required="true"/></parameters>
        <node id="a"><payload type="sh">echo "hello $WB_ARG_who"</payload></node>""", name="greet").decode())
    assert cli("workflow", "add", str(doc)).returncode == 0
    ran = cli("run", "greet", "--arg", "who=world")
    assert ran.returncode == 0, ran.stderr
    (wf,) = cli.workflows()
    assert cli.archive(delete_after=True).returncode == 0
    document = etree.parse(str(cli.archives / f"{wf.global_id}.xml"))
    assert record_schema().validate(document), record_schema().error_log
    archive = read_archive(FileTarget(cli.archives), f"{wf.global_id}.xml")
    state = etree.fromstring(archive.state_xml.encode())
    assert (state.get("storedName"), state.get("storedVersion")) == ("greet", "1")
    assert [(a.get("name"), a.text) for a in state.findall(f"{STATE}argument")] == [("who", "world")]
    shown = cli("admin", "archive", "--show", f"{cli.archives.as_uri()}/{wf.global_id}.xml")
    assert shown.returncode == 0, shown.stderr
