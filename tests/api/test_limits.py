"""[limits] max_nodes_per_user through the API (issue 12, section 1): a submission that would take a user's
unfinished workflows past the limit is refused as Client.LimitExceeded with the numbers, for admins too; nodes
of finished workflows do not count."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import zeep
from lxml import etree

from tests.api.helpers import USERS, Server, add_users, fault_code, waits_for, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

LIMIT = 4


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("limited")
    shutil.copy(sqlite_template, tmp / "broker.db")
    url = f"sqlite:///{tmp / 'broker.db'}"
    add_users(url)
    srv = Server(url, tmp, {"BROKER_LIMITS_MAX_NODES_PER_USER": str(LIMIT),
                            "BROKER_LIMITS_MAX_ATTRIBUTES_PER_ELEMENT": "6"}).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()


def nodes(count: int, first: str = "") -> str:
    return workflow(first + "\n".join(f'<node id="n{i}"><payload type="sh">true</payload></node>'
                                      for i in range(count)))


def test_a_submission_past_the_users_node_limit_is_a_limit_fault_until_the_other_workflow_ends(limited, tmp_path):
    release = tmp_path / "release"
    running = limited.core().submit({"workflowContent": nodes(2, f'<node id="wait">{waits_for(release)}</node>')})
    with pytest.raises(zeep.exceptions.Fault) as refused:
        limited.core().submit({"workflowContent": nodes(2)})
    assert fault_code(refused) == "Client.LimitExceeded"
    assert refused.value.message == ("a workflow of 2 nodes would bring the unfinished workflows of user alice to "
                                     f"5 nodes, limit {LIMIT} ([limits] max_nodes_per_user)")
    assert limited.core("bob").submit({"workflowContent": nodes(2)}).id > 0  # the limit is per user
    release.touch()
    assert limited.wait_state(running.id, "succeeded", "failed") == "succeeded"
    assert limited.core().submit({"workflowContent": nodes(2)}).id > 0


def test_admins_are_held_to_the_limit_too(limited):
    with pytest.raises(zeep.exceptions.Fault) as refused:
        limited.core("root").submit({"workflowContent": nodes(LIMIT + 1)})
    assert fault_code(refused) == "Client.LimitExceeded"
    assert "unfinished workflows of user root to 5 nodes" in refused.value.message


def test_the_attribute_caps_of_limits_hold_for_envelopes_too(limited):
    client = limited.client()
    envelope = etree.tostring(client.create_message(client.service, "getStatusInfoForId", "wf-x"))
    attributes = " ".join(f'a{i}="1"' for i in range(7))
    flooded = envelope.replace(b"<soap-env:Body>", f"<soap-env:Body {attributes}>".encode())
    assert flooded != envelope

    def post(body: bytes) -> requests.Response:
        return requests.post(limited.base + "/broker", data=body, auth=("alice", USERS["alice"][0]),
                             headers={"Content-Type": "text/xml; charset=utf-8"}, timeout=60)

    assert b"Client.NotFound" in post(envelope).content  # the plain call goes through
    refused = post(flooded)  # [limits] max_attributes_per_element = 6 for this server
    assert refused.status_code == 400
    assert b"Client.InvalidRequest" in refused.content and b"at most 6 are accepted" in refused.content
