"""The one mapping from broker errors to SOAP fault codes, and SOAP 1.1 fault envelopes for the edge.

Stable fault codes (the ``faultcode`` of a SOAP 1.1 fault, in the envelope namespace)::

    Client.InvalidDescription   the description was rejected; the detail has one <problem> per message,
                                each "FILE:LINE:COLUMN: message"
    Client.NotFound             no such workflow, node, user or event (or not the caller's)
    Client.NotAuthorized        authenticated, but the operation or the object is not the caller's
    Client.InvalidCredentials   no credentials, wrong password, unknown elf session (HTTP 401)
    Client.LimitExceeded        a documented limit was exceeded (request size, description limits)
    Client.InvalidState         the object is not in a state the operation applies to (delete running)
    Client.InvalidArgument      an argument has a wrong value (unknown event level, bad user name)
    Client.InvalidRequest       a malformed or hostile envelope (DOCTYPE, no Body, two Bodies, href)
    MustUnderstand              a header marked mustUnderstand="1" that the broker does not process
                                (SOAP 1.1 4.2.3; no detail element, as 4.4 asks for header faults)
    Server                      anything else; the message never carries internals
    Server.NotImplemented       an operation that this version does not provide yet

Every fault carries a ``<BrokerFault>`` detail in the service's namespace with the code again and the
problem lines; spyne's own faults are given one of these codes too (:data:`SPYNE_CODES`). Nothing here
imports spyne.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from xml.sax.saxutils import escape

from broker.errors import (BrokerError, ConfigError, DescriptionError, InvalidCredentials, LimitExceeded, NotAuthorized,
                           NotFound, StateError)
from broker.printable import printable, xml_safe

log = logging.getLogger("broker.api")

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
#: characters XML 1.0 cannot carry (control characters, lone surrogates, U+FFFE/U+FFFF)
class NotImplementedYet(BrokerError):
    """Raised by an operation this version of the API does not provide yet."""


class InvalidRequest(BrokerError):
    """Raised by the edge for a malformed or hostile request."""

    def __init__(self, message: str, status: str = "400 Bad Request"):
        super().__init__(message)
        self.status = status


class NotUnderstood(InvalidRequest):
    """Raised by the edge for a header with mustUnderstand="1" that the broker does not process."""

    def __init__(self, message: str):
        super().__init__(message, "500 Internal Server Error")


#: error class -> fault code; the first matching class (in this order) wins
CODES: tuple[tuple[type[BaseException], str], ...] = (
    (DescriptionError, "Client.InvalidDescription"),
    (NotFound, "Client.NotFound"),
    (NotAuthorized, "Client.NotAuthorized"),
    (InvalidCredentials, "Client.InvalidCredentials"),
    (LimitExceeded, "Client.LimitExceeded"),
    (StateError, "Client.InvalidState"),
    (ConfigError, "Client.InvalidArgument"),
    (NotUnderstood, "MustUnderstand"),
    (InvalidRequest, "Client.InvalidRequest"),
    (NotImplementedYet, "Server.NotImplemented"),
)

#: spyne's own fault codes (raised before an operation runs: the envelope names no operation of the service, an
#: argument does not match its type) -> the documented code they become; any other Client one is InvalidRequest
SPYNE_CODES = {
    "Client.ValidationError": "Client.InvalidArgument",
    "Client.SchemaValidationError": "Client.InvalidArgument",
    "Client.ResourceNotFound": "Client.InvalidRequest",
}
#: every code a fault may carry
DOCUMENTED = frozenset(code for _, code in CODES) | {"Server"}

#: the message of a Server fault for an unexpected error: the details stay in the broker's log
INTERNAL_MESSAGE = "internal error (the broker's log has the details)"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """What a fault says: its code, its message and its problem lines."""

    code: str
    message: str
    problems: tuple[str, ...] = ()

    @property
    def client(self) -> bool:
        return self.code.startswith("Client") or self.code == "MustUnderstand"


def fault_for(exc: BaseException) -> FaultSpec:
    """The fault an exception becomes. Unexpected exceptions become a ``Server`` fault without details."""
    for cls, code in CODES:
        if isinstance(exc, cls):
            # each problem is one line already (Problem.__str__ escapes what it quotes)
            problems = tuple(str(p) for p in exc.problems) if isinstance(exc, DescriptionError) else ()
            message = printable(str(exc))
            if problems:
                message = f"invalid workflow description: {len(problems)} problem(s)\n" + "\n".join(problems)
            return FaultSpec(code, message, problems)
    if isinstance(exc, BrokerError):
        # deliberate messages (a database that is unreachable, a rejected change): no internals in them
        return FaultSpec("Server", printable(str(exc)))
    return FaultSpec("Server", INTERNAL_MESSAGE)


def spyne_spec(code: str, message: str) -> FaultSpec:
    """The documented fault a fault of spyne's own (``code``, ``message``) becomes."""
    if code in DOCUMENTED:
        return FaultSpec(code, message)
    if code.startswith("Client"):
        return FaultSpec(SPYNE_CODES.get(code, "Client.InvalidRequest"), message)
    return FaultSpec("Server", INTERNAL_MESSAGE)


def log_fault(spec: FaultSpec, operation: str, who: str, exc: BaseException | None = None) -> None:
    """Client faults in one line at INFO; server faults at ERROR with the traceback of the cause."""
    if spec.client:
        first = spec.message.splitlines()[0] if spec.message else ""
        log.info("%s by %s: %s: %s", operation, who, spec.code, first)
    elif exc is not None and not isinstance(exc, BrokerError):
        log.error("%s by %s failed", operation, who, exc_info=exc)
    else:
        log.warning("%s by %s: %s: %s", operation, who, spec.code, spec.message)


def detail_xml(spec: FaultSpec, namespace: str) -> str:
    """The ``<BrokerFault>`` detail element as XML text (for spyne, which writes it with its own prefix)."""
    problems = "".join(f"<problem>{escape(xml_safe(p))}</problem>" for p in spec.problems)
    return (f'<BrokerFault xmlns="{escape(namespace)}"><code>{escape(spec.code)}</code>{problems}'
            "</BrokerFault>")


def xml_text(value: str) -> str:
    # as lxml writes text: &, <, > escaped, a carriage return as a character reference
    return escape(xml_safe(value)).replace("\r", "&#13;")


def envelope(spec: FaultSpec, namespace: str) -> bytes:
    """A complete SOAP 1.1 fault envelope, byte for byte as spyne writes the faults of the operations
    (its XML declaration's quotes, the service namespace as ``tns``, an empty ``faultactor``)."""
    detail = ""
    # SOAP 1.1 4.4: a fault about a header entry carries no detail element
    if spec.code != "MustUnderstand":
        problems = "".join(f"<tns:problem>{xml_text(p)}</tns:problem>" for p in spec.problems)
        detail = f"<detail><tns:BrokerFault><tns:code>{xml_text(spec.code)}</tns:code>{problems}</tns:BrokerFault></detail>"
    return ("<?xml version='1.0' encoding='UTF-8'?>\n"
            f'<soap11env:Envelope xmlns:soap11env="{SOAP11_ENV}" xmlns:tns="{escape(namespace, {chr(34): "&quot;"})}">'
            f"<soap11env:Body><soap11env:Fault><faultcode>soap11env:{spec.code}</faultcode>"
            f"<faultstring>{xml_text(spec.message)}</faultstring><faultactor></faultactor>{detail}"
            "</soap11env:Fault></soap11env:Body></soap11env:Envelope>").encode("utf-8")
