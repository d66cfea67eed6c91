"""Fault codes become the client's own errors (no server needed: the mapping alone)."""

from __future__ import annotations

import pytest
from lxml import etree

from broker import errors as broker_errors
from broker.api.faults import DOCUMENTED
from broker.client import errors
from broker.client.connection import fault_error


@pytest.mark.parametrize(("code", "expected"), [
    ("Client.InvalidDescription", errors.InvalidDescription), ("Client.NotFound", errors.NotFound),
    ("Client.NotAuthorized", errors.NotAuthorized), ("Client.InvalidCredentials", errors.InvalidCredentials),
    ("Client.LimitExceeded", errors.LimitExceeded), ("Client.InvalidState", errors.InvalidState),
    ("Client.InvalidArgument", errors.InvalidArgument), ("Client.InvalidRequest", errors.InvalidRequest),
    ("MustUnderstand", errors.InvalidRequest), ("Server", errors.ServerError),
    ("Server.NotImplemented", errors.ServerError), ("Client.SomethingNewer", errors.InvalidRequest),
])
def test_each_fault_code_becomes_its_error_with_or_without_its_namespace_prefix(code, expected):
    for written in (code, f"soap11env:{code}", f"{{http://schemas.xmlsoap.org/soap/envelope/}}{code}"):
        error = errors.fault_error(written, "the message")
        assert type(error) is expected and error.code == code and str(error) == "the message"


def test_every_documented_fault_code_has_an_error_of_its_own():
    for code in DOCUMENTED:
        assert type(errors.fault_error(code, "m")) is not errors.ClientError
        if code.startswith("Client."):
            assert code in errors.FAULT_ERRORS, code


def test_the_client_errors_are_broker_errors_and_the_named_ones_their_broker_counterparts():
    assert issubclass(errors.ClientError, broker_errors.BrokerError)
    assert issubclass(errors.NotFound, broker_errors.NotFound)
    assert issubclass(errors.NotAuthorized, broker_errors.NotAuthorized)
    assert issubclass(errors.InvalidState, broker_errors.StateError)
    assert issubclass(errors.WaitTimeout, TimeoutError)
    assert errors.ServerError.retryable and not errors.NotFound.retryable


def test_the_broker_fault_detail_gives_the_code_and_the_problems():
    detail = etree.fromstring(
        '<detail><BrokerFault xmlns="urn:workflow-broker:core:v1"><code>Client.InvalidDescription</code>'
        '<problem>a.xml:3:1: one</problem><problem>a.xml:9:2: two</problem></BrokerFault></detail>')

    class Fault:  # the attributes of a zeep Fault that the mapping reads
        code = "soap11env:Client.InvalidDescription"
        message = "invalid workflow description: 2 problem(s)"

    Fault.detail = detail
    error = fault_error(Fault())
    assert isinstance(error, errors.InvalidDescription)
    assert error.problems == ("a.xml:3:1: one", "a.xml:9:2: two")
