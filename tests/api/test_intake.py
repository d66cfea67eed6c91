"""Reading HTTP requests from bytes as they arrive (broker.api.intake): pure logic, fed byte by byte."""

from __future__ import annotations

import pytest

from broker.api.intake import MAX_HEAD_BYTES, HttpError, Intake


def feed_bytewise(intake: Intake, data: bytes) -> list:
    requests = []
    for i in range(len(data)):
        intake.feed(data[i:i + 1])
        while (request := intake.take()) is not None:
            requests.append(request)
    return requests


def test_a_request_with_a_known_length_arrives_whole_and_the_next_one_follows_it():
    one = b"POST /broker?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello"
    two = b"\r\nGET /broker?wsdl HTTP/1.0\r\n\r\n"
    first, second = feed_bytewise(Intake(100), one + two)
    assert (first.method, first.target, first.body, first.close) == ("POST", "/broker?x=1", b"hello", False)
    assert first.header("x-a") == "1, 2"
    assert (second.method, second.version, second.body, second.close) == ("GET", "HTTP/1.0", b"", True)


def test_a_chunked_body_is_decoded_with_extensions_and_trailers():
    data = (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"5;name=x\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: t\r\n\r\n")
    (request,) = feed_bytewise(Intake(100), data)
    assert request.body == b"hello world" and request.close


def test_a_body_over_the_limit_is_not_read_and_the_connection_closes_after_the_answer():
    intake = Intake(10)
    intake.feed(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n")
    request = intake.take()
    assert (request.oversized, request.body, request.close) == (11, b"", True)
    chunked = Intake(10)
    chunked.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n")
    request = chunked.take()
    assert len(request.body) == 16 and request.close  # the edge sees more than it accepts: 413


@pytest.mark.parametrize("data, status", [
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "400"),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n", "400"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n", "400"),
    (b"POST / HTTP/2.0\r\n\r\n", "505"),
    (b"POST /\r\n\r\n", "400"),
    (b"POST / HTTP/1.1\r\nHost : x\r\n\r\n", "400"),
    (b"POST / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", "400"),
    (b"POST / HTTP/1.1\r\n" + b"A: 1\r\n" * 101 + b"\r\n", "431"),
    (b"POST / HTTP/1.1\r\nA: " + b"x" * MAX_HEAD_BYTES, "431"),
])
def test_malformed_or_ambiguous_requests_are_refused_with_a_status(data, status):
    intake = Intake(100)
    intake.feed(data)
    with pytest.raises(HttpError) as caught:
        intake.take()
    assert caught.value.status.startswith(status)
