"""SOAP ``submit`` by stored name, version and arguments (the widened ``BrokerSubmission``) through zeep against
``broker serve``: arguments reach the payloads, the origin is recorded and shown by ``getWorkflowAsXml``, and
every refusal is a fault with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import zeep
from lxml import etree

from tests.api.helpers import REPO, fault_code, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

STATE_XSD = etree.XMLSchema(etree.parse(str(REPO / "schemas" / "workflow-state.xsd")))
STATE = "{urn:workflow-broker:state:1}"
ECHO = workflow("""
    <parameters>
      <parameter name="word" type="string" required="true"/>
      <parameter name="sizes" type="int" list="true" default="1"/>
      <parameter name="notes" type="file"/>
    </parameters>
    <node id="env"><payload type="sh">printf '%s|%s' "$WB_ARG_word" "$WB_ARG_notes" > out.txt</payload></node>
    <node id="tpl"><payload type="python" template="true">open("out.txt", "w").write({{ word }})</payload></node>
    <sweep id="s">
      <param name="size"><fromArgument name="sizes"/></param>
      <body><node id="b"><payload type="sh">echo "$WB_PARAM_size" > out.txt</payload></node></body>
    </sweep>
""", name="echo")


@pytest.fixture(scope="module")
def stored_echo(server):
    """``echo`` stored by bob, versions 1 and 2 (2 has a different default)."""
    from broker.persistence import repository, stored

    with server.sessions().begin() as s:
        bob = repository.get_user(s, "bob")
        stored.add(s, bob, "echo", ECHO, "echo")
        stored.add(s, bob, "echo", ECHO.replace('default="1"', 'default="7"'), "echo")
    return "echo"


def _out(server, workflow_id: int, path: str) -> str:
    return (Path(server.node(workflow_id, path).workdir) / "out.txt").read_text()


def test_submit_by_stored_name_version_and_arguments_runs_it_and_records_the_origin(server, stored_echo):
    from broker.persistence.models import Workflow

    handle = server.core().submit({"storedName": "echo", "storedVersion": 1, "argument": [
        {"name": "word", "value": "$(id) 'quoted'"}, {"name": "sizes", "value": "3,4"},
        {"name": "notes", "value": "the notes\n"}]})
    assert server.wait_state(handle.id, "succeeded", "failed") == "succeeded"
    assert _out(server, handle.id, "env") == "$(id) 'quoted'|the notes\n"
    assert _out(server, handle.id, "tpl") == "$(id) 'quoted'"
    assert sorted(_out(server, handle.id, f"s[{i}]/b") for i in (0, 1)) == ["3\n", "4\n"]
    with server.sessions()() as s:
        row = s.get(Workflow, handle.id)
        assert (row.origin_name, row.origin_version) == ("echo", 1)
        assert row.arguments == [["word", "$(id) 'quoted'"], ["sizes", "3,4"], ["notes", "the notes\n"]]
    document = etree.fromstring(server.core().getWorkflowAsXml(handle.id).encode())
    assert STATE_XSD.validate(document), STATE_XSD.error_log
    assert (document.get("storedName"), document.get("storedVersion")) == ("echo", "1")
    assert [(a.get("name"), a.text) for a in document.findall(f"{STATE}argument")] == [
        ("word", "$(id) 'quoted'"), ("sizes", "3,4"), ("notes", "the notes\n")]


def test_without_a_version_the_newest_runs_with_its_defaults(server, stored_echo):
    from broker.persistence.models import Workflow

    handle = server.core().submit({"storedName": "echo", "argument": [{"name": "word", "value": "w"}]})
    assert server.wait_state(handle.id, "succeeded", "failed") == "succeeded"
    assert _out(server, handle.id, "s[0]/b") == "7\n"
    with server.sessions()() as s:
        assert s.get(Workflow, handle.id).origin_version == 2


def test_a_submission_without_the_new_fields_works_as_before_and_shows_no_origin(server):
    handle = server.core().submit({"workflowContent": workflow('<node id="a"><payload type="sh">true</payload></node>')})
    document = etree.fromstring(server.core().getWorkflowAsXml(handle.id).encode())
    assert document.get("storedName") is None and document.find(f"{STATE}argument") is None


@pytest.mark.parametrize("fields, code, message", [
    ({"storedName": "echo"}, "Client.InvalidArgument", "missing required argument 'word' (string)"),
    ({"storedName": "echo", "argument": [{"name": "word", "value": "a"}, {"name": "x", "value": "1"}]},
     "Client.InvalidArgument", "unknown argument 'x' (the workflow's parameters: word, sizes, notes)"),
    ({"storedName": "echo", "argument": [{"name": "word", "value": "a"}, {"name": "sizes", "value": "1,b"}]},
     "Client.InvalidArgument", "argument 'sizes' (list of int): item 2 'b' is not an integer"),
    ({"storedName": "nope"}, "Client.NotFound", "no stored workflow 'nope'"),
    ({"storedName": "echo", "storedVersion": 9}, "Client.NotFound", "stored workflow 'echo' has no version 9"),
    ({"storedName": "echo", "workflowContent": "<x/>"}, "Client.InvalidArgument",
     "give storedName, workflowContent or workflowUrl: only one of them"),
    ({"storedVersion": 1, "workflowContent": "<x/>"}, "Client.InvalidArgument", "storedVersion needs storedName"),
    ({"storedName": "../etc"}, "Client.InvalidArgument", "'../etc' is not a valid stored workflow name"),
])
def test_each_refusal_is_a_fault_with_one_clear_message(server, stored_echo, fields, code, message):
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit(fields)
    assert fault_code(caught) == code
    assert caught.value.message.startswith(message)


def test_the_python_client_submits_a_stored_workflow_with_arguments(server, stored_echo):
    from broker.client import Client

    with Client(server.base, "alice", "alice-pw") as client:
        wf = client.submit("echo", version=1, args={"word": "py", "sizes": [5, 6]})
        assert wf.wait(60).state == "succeeded"
    assert sorted(_out(server, wf.id, f"s[{i}]/b") for i in (0, 1)) == ["5\n", "6\n"]
