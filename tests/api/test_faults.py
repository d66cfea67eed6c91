"""Every fault a client can get carries a documented code and the <BrokerFault> detail, whoever raised it
(the broker's operations, spyne's own checks of the envelope, the edge), on both services."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.api.helpers import CORE, ENV, call, envelope

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

ADMIN = "urn:workflow-broker:admin:v1"
#: the codes README and broker/api/faults.py document
DOCUMENTED = {"Client.InvalidDescription", "Client.NotFound", "Client.NotAuthorized", "Client.InvalidCredentials",
              "Client.LimitExceeded", "Client.InvalidState", "Client.InvalidArgument", "Client.InvalidRequest",
              "Server", "Server.NotImplemented"}


def broker_fault(body: bytes, namespace: str = CORE) -> tuple[str, str, str]:
    """(fault code, fault string, the code in the <BrokerFault> detail); fails if any part is missing."""
    root = etree.fromstring(body)
    fault = root.find(f"{{{ENV}}}Body/{{{ENV}}}Fault")
    assert fault is not None, body[:600]
    detail = fault.find(f"detail/{{{namespace}}}BrokerFault")
    assert detail is not None, body[:600]
    code = fault.findtext("faultcode").split(":")[-1]
    assert code in DOCUMENTED, body[:600]
    return code, fault.findtext("faultstring"), detail.findtext(f"{{{namespace}}}code")


def _id_call(operation: str, value: str) -> bytes:
    return envelope(f"<c:{operation}><c:id>{value}</c:id></c:{operation}>")


@pytest.mark.parametrize("value", ["abc", "1.5", "2147483648", "-2147483649", "99999999999999999999"])
def test_an_id_that_is_not_an_xs_int_is_an_invalid_argument_with_detail(server, value):
    for operation in ("getDescriptorAsXml", "getWorkflowAsXml", "getNodeAsXml"):
        status, answer = call(server, _id_call(operation, value))
        code, message, detail = broker_fault(answer)
        assert (status, code, detail) == (500, "Client.InvalidArgument", "Client.InvalidArgument"), answer
        assert message.startswith(f"{operation}: invalid id {value!r}: expected an xs:int, an integer from "
                                  "-2147483648 to 2147483647"), message


def test_an_unknown_operation_is_an_invalid_request_with_detail_on_both_services(server):
    status, answer = call(server, envelope("<c:launchMissiles/>"))
    assert status == 500 and broker_fault(answer)[::2] == ("Client.InvalidRequest", "Client.InvalidRequest")
    assert "launchMissiles" in broker_fault(answer)[1]
    admin_call = (f'<?xml version="1.0"?><s:Envelope xmlns:s="{ENV}" xmlns:a="{ADMIN}"><s:Body><a:launchMissiles/>'
                  "</s:Body></s:Envelope>").encode()
    status, answer = call(server, admin_call, path="/admin")
    assert status == 500 and broker_fault(answer, ADMIN)[0] == "Client.InvalidRequest"


def test_a_wrong_argument_type_elsewhere_is_an_invalid_argument_too(server):
    status, answer = call(server, envelope("<c:getStatusInfo><c:lastId>twelve</c:lastId></c:getStatusInfo>"))
    assert broker_fault(answer)[::2] == ("Client.InvalidArgument", "Client.InvalidArgument")


@pytest.mark.parametrize("path", ["//admin", "//broker", "//"])
def test_a_post_to_a_path_with_doubled_slashes_gets_a_soap_fault(server, path):
    status, answer = call(server, envelope("<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>"), path=path)
    assert status in (404, 500), (status, answer)
    assert broker_fault(answer)[0] == "Client.InvalidRequest"


def test_the_smallest_xs_int_is_not_found_as_an_id_and_out_of_range_as_a_priority(server):
    for operation in ("getDescriptorAsXml", "getWorkflowAsXml", "getNodeAsXml"):
        status, answer = call(server, _id_call(operation, "-2147483648"))
        assert broker_fault(answer)[::2] == ("Client.NotFound", "Client.NotFound"), answer
    submission = ("<c:submit><c:submission><t:priority>-2147483648</t:priority><t:workflowContent>"
                  "&lt;workflow xmlns='urn:workflow-broker:workflow:1.0' name='x'&gt;&lt;node id='a'&gt;"
                  "&lt;payload type='sh'&gt;true&lt;/payload&gt;&lt;/node&gt;&lt;/workflow&gt;"
                  "</t:workflowContent></c:submission></c:submit>")
    body = envelope(submission).replace(b'xmlns:c=', b'xmlns:t="urn:workflow-broker:types:v1" xmlns:c=')
    status, answer = call(server, body)
    code, message, detail = broker_fault(answer)
    assert (code, detail) == ("Client.InvalidArgument", "Client.InvalidArgument"), answer
    assert "priority" in message and "1,000,000" in message.replace("1000000", "1,000,000"), message
