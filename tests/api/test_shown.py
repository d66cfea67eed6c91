"""SOAP faults show user text escaped (issue 12, section 6): the fault string and every <problem> element, through
a real `broker serve` and zeep, for the broker's faults (fault_for) and for spyne's own."""

from __future__ import annotations

import pytest
import requests
import zeep
from lxml import etree

from tests.api.helpers import USERS, fault_code, workflow

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

NS = {"b": "urn:workflow-broker:core:v1"}


def test_an_invalid_description_fault_escapes_what_it_quotes_in_its_string_and_problems(server):
    bad = workflow('<node id="a.\u202etxt&#10;forged: valid"><payload type="sh">true</payload></node>')
    with pytest.raises(zeep.exceptions.Fault) as caught:
        server.core().submit({"workflowContent": bad})
    assert fault_code(caught) == "Client.InvalidDescription"
    problems = [p.text for p in caught.value.detail.findall(".//b:problem", NS)]
    assert len(problems) == 1
    assert problems[0].startswith("<workflowContent>:2:0: node 'a.\\u202etxt\\nforged: valid': ")
    message = caught.value.message
    assert message.splitlines() == ["invalid workflow description: 1 problem(s)", problems[0]]
    assert "\u202e" not in message


def test_spyne_s_own_fault_for_a_value_that_does_not_validate_quotes_it_escaped(server):
    # spyne quotes with repr(): a guard that it goes on doing so, since its faults do not pass fault_for()
    client = server.client()
    envelope = etree.tostring(client.create_message(client.service, "submit",
                                                    {"workflowContent": "x", "priority": 1}))
    hostile = envelope.replace(b">1</", "> 1\u202e\u200b</".encode())
    assert hostile != envelope
    response = requests.post(server.base + "/broker", data=hostile, auth=("alice", USERS["alice"][0]),
                             headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"submit"'},
                             timeout=60)
    assert response.status_code == 500
    fault = etree.fromstring(response.content).find(".//faultstring")
    assert fault is not None and "\\u202e\\u200b" in fault.text and "\u202e" not in fault.text
