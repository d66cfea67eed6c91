"""What a submission may ask for: publishMetadataTo within the operator's destinations and never the broker's
own topics, priority within the description's range, a request id that names one submission only."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import zeep
from sqlalchemy import func, select

from tests.api.helpers import BROKER, EXAMPLES, Server, add_users, fault_code, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

HELLO = (EXAMPLES / "hello.xml").read_text(encoding="utf-8")
#: the operator's [events] metadata_destinations on this module's server
ALLOWED = "/topic/lab. /queue/lab."


@pytest.fixture(scope="module")
def server(tmp_path_factory, sqlite_template):
    tmp = tmp_path_factory.mktemp("serve-rules")
    shutil.copy(sqlite_template, tmp / "broker.db")
    url = f"sqlite:///{tmp / 'broker.db'}"
    add_users(url)
    srv = Server(url, tmp, {"BROKER_EVENTS_METADATA_DESTINATIONS": ALLOWED}).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def workflows_of(server) -> int:
    from broker.persistence.models import Workflow

    with server.sessions()() as s:
        return s.execute(select(func.count()).select_from(Workflow)).scalar_one()


def refused(server, submission: dict) -> zeep.exceptions.Fault:
    before = workflows_of(server)
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit(submission)
    assert workflows_of(server) == before  # nothing stored
    return caught


@pytest.mark.parametrize("destination", ["/topic/broker.user.bob", "/topic/broker.events", "/queue/broker.x",
                                         "not a destination", "/queue/lab.x\nreceipt:spoof", "/topic/lab.*",
                                         "/topic/other", "/queue/" + "lab." + "x" * 200])
def test_a_metadata_destination_outside_the_allowed_ones_is_an_invalid_argument(server, destination):
    caught = refused(server, {"workflowContent": HELLO, "publishMetadataTo": destination})
    assert fault_code(caught) == "Client.InvalidArgument", caught.value.message
    assert "publishMetadataTo" in caught.value.message


def test_an_allowed_metadata_destination_is_accepted_and_stored(server):
    from broker.persistence.models import Workflow

    handle = server.core().submit({"workflowContent": HELLO, "publishMetadataTo": "/queue/lab.results"})
    with server.sessions()() as s:
        assert s.get(Workflow, handle.id).publish_metadata_to == "/queue/lab.results"


def test_the_description_s_destination_is_held_to_the_same_rules(server):
    reserved = workflow('<node id="a"><payload type="sh">true</payload></node>').replace(
        'name="test"', 'name="test" publishMetadataTo="/topic/broker.user.bob"')
    caught = refused(server, {"workflowContent": reserved})
    assert fault_code(caught) == "Client.InvalidDescription" and "broker's own topics" in caught.value.message
    elsewhere = reserved.replace("/topic/broker.user.bob", "/topic/elsewhere")
    caught = refused(server, {"workflowContent": elsewhere})
    assert fault_code(caught) == "Client.InvalidArgument" and "metadata_destinations" in caught.value.message


def test_the_default_allows_any_topic_or_queue_but_the_broker_s_own():
    from broker.config import Settings
    from broker.events.routing import metadata_destination_problem

    allowed = Settings().events.metadata_destinations
    assert metadata_destination_problem("/topic/analysis.meta", allowed) is None
    assert metadata_destination_problem("/queue/x-1_2", allowed) is None
    for bad in ("/topic/broker.user.bob", "/topic/broker.events", "/topic/a b", "/topic/", "/exchange/x",
                "/topic/x\n", "/topic/" + "x" * 201):
        assert metadata_destination_problem(bad, allowed) is not None, bad


def test_broker_validate_refuses_a_reserved_destination_in_a_description(tmp_path):
    doc = tmp_path / "meta.xml"
    doc.write_text(workflow('<node id="a"><payload type="sh">true</payload></node>').replace(
        'name="test"', 'name="test" publishMetadataTo="/topic/broker.events"'), encoding="utf-8")
    result = subprocess.run([str(BROKER), "validate", str(doc)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{doc}:1:" in result.stdout + result.stderr and "broker's own topics" in result.stdout + result.stderr


@pytest.mark.parametrize("priority", [1_000_001, -1_000_001, 2**31 - 1])
def test_a_priority_outside_the_description_s_range_is_an_invalid_argument(server, priority):
    caught = refused(server, {"workflowContent": HELLO, "priority": priority})
    assert fault_code(caught) == "Client.InvalidArgument" and "priority" in caught.value.message


def test_the_extreme_priorities_are_accepted(server):
    for priority in (1_000_000, -1_000_000):
        assert server.core().submit({"workflowContent": HELLO, "priority": priority}).globalId.startswith("wf-")


def test_a_request_id_used_for_different_content_is_refused(server):
    first = server.core().submit({"workflowContent": HELLO, "id": "once", "priority": 3,
                                  "publishMetadataTo": "/topic/lab.a"})
    other = HELLO.replace('name="', 'name="other-')
    for changed in ({"workflowContent": other}, {"priority": 4}, {"publishMetadataTo": "/topic/lab.b"},
                    {"experimentId": "exp"}, {"eventLevel": "DEBUG"}, {"workflowId": "label"}):
        caught = refused(server, {"workflowContent": HELLO, "id": "once", **changed})
        assert fault_code(caught) == "Client.InvalidArgument", changed
        assert first.globalId in caught.value.message and "new request id" in caught.value.message
    # a true retry: the same content, fields left out or the same as stored
    again = server.core().submit({"workflowContent": HELLO, "id": "once"})
    same = server.core().submit({"workflowContent": HELLO, "id": "once", "priority": 3, "eventLevel": "STATUS"})
    assert again.globalId == same.globalId == first.globalId
