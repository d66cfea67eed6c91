"""Hostile and malformed requests: each gets a SOAP fault (never a raw 500 or a traceback); service keeps serving."""

from __future__ import annotations

import base64
import http.client
import urllib.parse

import pytest
from lxml import etree
from tests.api.helpers import AUTH, ENV, call, envelope

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process


def fault_of(body: bytes) -> tuple[str, str]:
    """(fault code without prefix, fault string) of a SOAP 1.1 fault envelope; fails if it is not one."""
    root = etree.fromstring(body)
    fault = root.find(f"{{{ENV}}}Body/{{{ENV}}}Fault")
    assert fault is not None, body[:500]
    return fault.findtext("faultcode").split(":")[-1], fault.findtext("faultstring")


VALID = envelope("<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>")

HOSTILE = {
    "doctype with an internal entity": (b'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x "boom">]>'
                                        + VALID[len(b'<?xml version="1.0"?>'):], "Client.InvalidRequest"),
    "billion laughs": (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
                       b"<lolz>&lol2;</lolz>", "Client.InvalidRequest"),
    "external entity": (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                        + VALID[len(b'<?xml version="1.0"?>'):], "Client.InvalidRequest"),
    "empty body element": (envelope(""), "Client.InvalidRequest"),
    "two bodies": (VALID.replace(b"</s:Envelope>", b"<s:Body><c:getStatusInfo/></s:Body></s:Envelope>"),
                   "Client.InvalidRequest"),
    "two operations in one body": (envelope("<c:getStatusInfo/><c:getStatusInfo/>"), "Client.InvalidRequest"),
    "href cycle": (envelope('<c:getStatusInfo><c:lastId href="#a" id="b"/></c:getStatusInfo>'
                            '<x id="a" href="#b"/>'), "Client.InvalidRequest"),
    "not xml": (b"this is not xml", "Client.InvalidRequest"),
    "truncated xml": (VALID[:60], "Client.InvalidRequest"),
    "empty request": (b"", "Client.InvalidRequest"),
    "no envelope": (b"<getStatusInfo/>", "Client.InvalidRequest"),
    "soap 1.2 envelope": (VALID.replace(ENV.encode(), b"http://www.w3.org/2003/05/soap-envelope"),
                          "Client.InvalidRequest"),
    "unknown operation": (envelope("<c:launchMissiles/>"), None),
    "wrong argument type": (envelope("<c:getStatusInfo><c:lastId>twelve</c:lastId></c:getStatusInfo>"), None),
    "deep nesting": (envelope("<c:getStatusInfo>" + "<x>" * 5000 + "</x>" * 5000 + "</c:getStatusInfo>"), None),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_envelope_gets_a_soap_fault_and_the_service_keeps_serving(server, name):
    body, expected = HOSTILE[name]
    status, answer = call(server, body)
    code, message = fault_of(answer)
    assert status in (400, 500), status
    if expected is not None:
        assert code == expected, message
    else:
        assert code.startswith("Client"), (code, message)
    assert "Traceback" not in message and "File \"" not in message
    status, answer = call(server, VALID)
    assert status == 200 and b"getStatusInfoResponse" in answer


def test_an_oversized_request_is_refused_before_it_is_read(server):
    status, answer = call(server, b"x", headers={"Content-Length": str(64 * 1024**2)})
    assert status == 413 and fault_of(answer)[0] == "Client.LimitExceeded"


def test_an_oversized_chunked_request_is_refused(server):
    def chunks():
        for _ in range(20):
            yield b"<" + b"x" * 1024**2

    url = urllib.parse.urlsplit(server.base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        connection.request("POST", "/broker", body=chunks(), encode_chunked=True,
                           headers={"Content-Type": "text/xml", "Authorization": AUTH, "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
    except (BrokenPipeError, ConnectionResetError):
        # the server answered 413 and closed while chunks were still being sent: refused before the end, too
        response = None
    if response is not None:
        assert response.status == 413 and fault_of(response.read())[0] == "Client.LimitExceeded"
    connection.close()
    assert call(server, VALID)[0] == 200


def test_a_wrong_content_type_is_refused(server):
    for content_type in ("application/json", "application/soap+xml", ""):
        status, answer = call(server, VALID, content_type=content_type)
        assert status == 415 and fault_of(answer)[0] == "Client.InvalidRequest"


def test_other_methods_and_paths_get_faults_and_the_wsdl_needs_no_credentials(server):
    assert fault_of(call(server, None, method="GET")[1])[0] == "Client.InvalidRequest"
    assert fault_of(call(server, None, method="PUT")[1])[0] == "Client.InvalidRequest"
    status, answer = call(server, VALID, path="/nowhere")
    assert status == 404 and fault_of(answer)[0] == "Client.InvalidRequest"
    status, answer = call(server, None, method="GET", path="/admin?wsdl", headers={"Authorization": ""})
    assert status == 200 and b"IBroker" in answer


def test_missing_and_malformed_credentials_get_401_with_a_fault(server):
    for header in ("", "Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"no-colon").decode()):
        status, answer = call(server, VALID, headers={"Authorization": header})
        assert status == 401 and fault_of(answer)[0] == "Client.InvalidCredentials", header


# ------------------------------------------------------------------------------- SOAP 1.1 header processing

def _header(entries: str) -> str:
    return f"<s:Header>{entries}</s:Header>"


@pytest.mark.parametrize("body", ["getStatusInfo", "getStatusInfoForId"])
def test_a_mandatory_header_the_broker_does_not_understand_is_a_must_understand_fault(server, body):
    inner = ("<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>" if body == "getStatusInfo" else
             "<c:getStatusInfoForId><c:globalId>wf-0000000000000000000</c:globalId></c:getStatusInfoForId>")
    for value in ("1", "true"):
        header = _header(f'<x:Trace xmlns:x="urn:example:trace" s:mustUnderstand="{value}">t</x:Trace>')
        status, answer = call(server, envelope(inner, header))
        assert status == 500, answer
        code, message = fault_of(answer)
        assert code == "MustUnderstand" and "urn:example:trace" in message
        assert etree.fromstring(answer).find(f".//{{{ENV}}}Fault/detail") is None  # SOAP 1.1 4.4


def test_optional_headers_and_headers_for_another_actor_are_ignored_and_wsse_security_is_understood(server):
    optional = _header('<x:Trace xmlns:x="urn:example:trace" s:mustUnderstand="0">t</x:Trace>'
                       '<y:Hint xmlns:y="urn:example:hint">h</y:Hint>'
                       '<z:Route xmlns:z="urn:example:route" s:mustUnderstand="1" '
                       's:actor="urn:example:a-proxy">r</z:Route>')
    inner = "<c:getStatusInfo><c:lastId>0</c:lastId></c:getStatusInfo>"
    status, answer = call(server, envelope(inner, optional))
    assert status == 200 and b"getStatusInfoResponse" in answer
    wsse = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
    token = _header(f'<w:Security xmlns:w="{wsse}" s:mustUnderstand="1"><w:UsernameToken>'
                    "<w:Username>alice</w:Username><w:Password>alice-pw</w:Password></w:UsernameToken></w:Security>")
    status, answer = call(server, envelope(inner, token), headers={"Authorization": ""})
    assert status == 200 and b"getStatusInfoResponse" in answer


# ------------------------------------------------------------------------------------------ attribute floods

def test_an_envelope_with_too_many_attributes_is_refused_before_spyne_sees_it(server):
    flood = " ".join(f'a{i}="x"' for i in range(100_000))
    for inner in (f"<c:getStatusInfo {flood}><c:lastId>0</c:lastId></c:getStatusInfo>",
                  f"<c:getStatusInfoForId {flood}><c:globalId>wf-x</c:globalId></c:getStatusInfoForId>"):
        status, answer = call(server, envelope(inner))
        code, message = fault_of(answer)
        assert (status, code) == (400, "Client.InvalidRequest") and "100000 attributes" in message, message
    declarations = " ".join(f'xmlns:n{i}="urn:n{i}"' for i in range(300))
    code, message = fault_of(call(server, envelope(f"<c:getStatusInfo {declarations}/>"))[1])
    assert code == "Client.InvalidRequest" and "at most 256" in message
    spread = "".join(f'<c:lastId {" ".join(f"a{j}={chr(34)}x{chr(34)}" for j in range(200))}/>' for _ in range(6000))
    code, message = fault_of(call(server, envelope(f"<c:getStatusInfo>{spread}</c:getStatusInfo>"))[1])
    assert code == "Client.InvalidRequest" and "more than 1000000" in message
    assert call(server, VALID)[0] == 200


def test_an_envelope_with_too_many_elements_is_refused_before_spyne_sees_it(server):
    siblings = "<c:lastId>1</c:lastId>" * 200_000
    status, answer = call(server, envelope(f"<c:getStatusInfo>{siblings}</c:getStatusInfo>"))
    code, message = fault_of(answer)
    assert (status, code) == (400, "Client.InvalidRequest") and "more than 10000 elements" in message, message


def test_a_client_that_expects_100_continue_gets_it_before_sending_its_body(server):
    import socket

    url = urllib.parse.urlsplit(server.base)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(f"POST /broker HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {AUTH}\r\n"
                     f"Expect: 100-continue\r\nContent-Length: {len(VALID)}\r\n\r\n".encode())
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(VALID)
        answer = b""
        while b"</soap11env:Envelope>" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"getStatusInfoResponse" in answer
