"""The hardened edge: WSGI middleware in front of the two spyne applications.

For every request, before spyne sees it:

* routing: ``/broker`` (core) and ``/admin``; ``GET ...?wsdl`` answers the WSDL prepared at start-up;
* a POST must be ``text/xml`` (SOAP 1.1) and at most ``[api] max_request_bytes`` long (checked against
  Content-Length before anything is read, and again while reading);
* the envelope is parsed once with a parser that loads no DTD, resolves no entity and reaches no network;
  any DOCTYPE, a root other than a SOAP 1.1 Envelope, a Body that is missing, repeated, empty or holds
  more than one element, any ``href`` reference (SOAP encoding's multi-references, which spyne does not
  bound), more attributes (namespace declarations included) on one element or in the whole envelope than
  the caps, and more than :data:`MAX_ELEMENTS` elements (spyne's handling of either is quadratic: 100,000
  attributes took 40 s, 200,000 sibling elements 41 s) are refused;
* a header entry marked ``mustUnderstand="1"`` (for this node: no ``actor``, or ``actor`` "next") that
  the broker does not process is a ``MustUnderstand`` fault (SOAP 1.1 4.2.3, 4.4.1); ``wsse:Security``
  is the one it processes;
* authentication: HTTP Basic or a WS-Security UsernameToken (PasswordText). ``updateNodeStatus`` takes an
  elf session (Username: the session id, Password: its secret); every other operation a user's password.

Whatever goes wrong becomes a SOAP fault (never a raw 500 or a traceback), and whatever spyne answers
with is checked to be a SOAP envelope.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from broker.api.answer import call
from broker.api.faults import InvalidRequest, NotUnderstood, envelope, fault_for, log_fault
from broker.api.identity import ELF_KEY, USER_KEY, Authenticator
from broker.errors import InvalidCredentials, LimitExceeded

log = logging.getLogger("broker.api")

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                 "#PasswordText")
#: the operation that authenticates with an elf session instead of a user's password
ELF_OPERATION = "updateNodeStatus"
_FAULTCODE = re.compile(rb"<faultcode>(?:[^:<]*:)?([^<]{1,200})</faultcode>")
#: bytes read from the request body at a time
READ_BLOCK = 64 * 1024
#: SOAP 1.1 4.2.2: a header entry without an actor, or with this one, is meant for the broker
ACTOR_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"
#: header entries the broker processes; mustUnderstand="1" on any other is a MustUnderstand fault
UNDERSTOOD_HEADERS = frozenset({f"{{{WSSE}}}Security"})
#: default caps on attributes (namespace declarations count) per element and per envelope
MAX_ATTRIBUTES_PER_ELEMENT, MAX_ATTRIBUTES = 256, 1_000_000
#: most elements in one envelope: no operation needs more (an updateNodeStatus with 3,000 output properties
#: is 9,000), and spyne's handling of many siblings is quadratic (200,000 took 41 s)
MAX_ELEMENTS = 10_000

#: the WSGI environ key the edge names a request's operation under, once it has parsed the envelope
OPERATION_KEY = "broker.operation"

StartResponse = Callable[..., Any]
#: answers one operation from the parsed envelope and the environ (holding the caller): the response body,
#: or None to leave the request to spyne
FastHandler = Callable[[Any, dict[str, Any]], "bytes | None"]


@dataclass(frozen=True, slots=True)
class Route:
    """One service: its spyne WSGI application, its namespace (for faults) and its WSDL."""

    path: str
    app: Callable[..., Iterable[bytes]]
    namespace: str
    wsdl: bytes


def _parser() -> etree.XMLParser:
    # huge_tree: a description may be one text node above libxml2's 10 MB default; the size cap bounds it
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=True, remove_blank_text=False)


class Edge:
    """The WSGI application ``broker serve`` runs: checks, authenticates, then hands over to spyne."""

    def __init__(self, routes: Iterable[Route], authenticator: Authenticator | None, max_request_bytes: int,
                 fast: dict[tuple[str, str], FastHandler] | None = None, *,
                 max_attributes: tuple[int, int] = (MAX_ATTRIBUTES_PER_ELEMENT, MAX_ATTRIBUTES)):
        """``fast``: (path, operation) -> a handler answering that operation without spyne
        (:mod:`broker.api.fastpath`); it gets the parsed envelope and the environ with the caller.
        ``max_attributes``: (per element, per envelope)."""
        self.routes = {r.path: r for r in routes}
        self.auth = authenticator
        self.max_bytes = max_request_bytes
        self.fast = dict(fast or {})
        self.max_attributes = max_attributes

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/") or "/"
        route = self.routes.get(path)
        namespace = route.namespace if route else next(iter(self.routes.values())).namespace
        operation = "request"
        who = environ.get("REMOTE_ADDR", "?")
        started = time.perf_counter()
        try:
            if route is None:
                raise InvalidRequest(f"no service at {path!r}: the services are {', '.join(sorted(self.routes))}",
                                     "404 Not Found")
            method = environ.get("REQUEST_METHOD", "GET")
            if method in ("GET", "HEAD"):
                if environ.get("QUERY_STRING", "").lower() in ("wsdl", "wsdl="):
                    return _respond(start_response, "200 OK", route.wsdl, "text/xml; charset=utf-8")
                raise InvalidRequest(f"GET {path}?wsdl gives the WSDL; calls are POSTed", "405 Method Not Allowed")
            if method != "POST":
                raise InvalidRequest(f"method {method} is not allowed: POST a SOAP 1.1 envelope",
                                     "405 Method Not Allowed")
            body = self._read(environ)
            tree = _parse(body, *self.max_attributes)
            operation = environ[OPERATION_KEY] = _operation(tree)  # for the call's figures (broker.api.front)
            who = self._authenticate(environ, tree, operation)
            handler = self.fast.get((path, operation))
            answer = None if handler is None else handler(tree, environ)
            if answer is not None:
                return _respond(start_response, "200 OK", answer, "text/xml; charset=utf-8")
            del tree  # spyne parses the body itself: the edge's tree would only double the peak
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            return self._call_spyne(route, environ, start_response, operation, who)
        except Exception as exc:  # every failure at the edge becomes a fault
            spec = fault_for(exc)
            log_fault(spec, operation, who, exc)
            status = getattr(exc, "status", None) or _status(spec.code)
            headers = [("WWW-Authenticate", 'Basic realm="workflow broker"')] if status.startswith("401") else []
            return _respond(start_response, status, envelope(spec, namespace), "text/xml; charset=utf-8", headers)
        finally:
            log.debug("%s took %.1f ms", operation, (time.perf_counter() - started) * 1000)

    # ----------------------------------------------------------------------------------------- checks

    def _read(self, environ: dict[str, Any]) -> bytes:
        content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if content_type != "text/xml":
            hint = " (a SOAP 1.2 client: use the SOAP 1.1 binding of the WSDL)" \
                if content_type == "application/soap+xml" else ""
            raise InvalidRequest(f"content type {content_type or '(none)'!r} is not accepted: SOAP 1.1 requests "
                                 f"are text/xml{hint}", "415 Unsupported Media Type")
        length_text = environ.get("CONTENT_LENGTH") or ""
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                raise InvalidRequest(f"invalid Content-Length {length_text!r}") from None
            if length > self.max_bytes:
                raise _too_large(length, self.max_bytes)
        else:
            length = self.max_bytes + 1  # chunked: read up to the cap and one byte more
        stream = environ["wsgi.input"]
        if length_text:  # one read: the server's buffer is handed over, not copied
            body = stream.read(length)
            if not body.strip():
                raise InvalidRequest("empty request: POST a SOAP 1.1 envelope")
            return body
        chunks, received = [], 0
        while received < length:
            chunk = stream.read(min(READ_BLOCK, length - received))
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            if received > self.max_bytes:
                raise _too_large(received, self.max_bytes)
        body = b"".join(chunks)
        if not body.strip():
            raise InvalidRequest("empty request: POST a SOAP 1.1 envelope")
        return body

    def _authenticate(self, environ: dict[str, Any], tree: Any, operation: str) -> str:
        """Check the credentials and record the caller in ``environ``; returns who it is, for logs."""
        if self.auth is None:
            raise InvalidCredentials("this server has no authenticator")
        credentials = _basic(environ.get("HTTP_AUTHORIZATION", ""))
        token = _username_token(tree)
        if credentials and token and credentials != token:
            raise InvalidCredentials("HTTP Basic and UsernameToken name different credentials")
        credentials = credentials or token
        if credentials is None:
            raise InvalidCredentials("authentication required: HTTP Basic or a WS-Security UsernameToken")
        name, secret = credentials
        if operation == ELF_OPERATION:
            environ[ELF_KEY] = self.auth.elf(name, secret)
            return f"elf session {name}"
        environ[USER_KEY] = self.auth.user(name, secret)
        return f"user {name}"

    # ------------------------------------------------------------------------------------------ spyne

    def _call_spyne(self, route: Route, environ: dict[str, Any], start_response: StartResponse, operation: str,
                    who: str) -> Iterable[bytes]:
        status, headers, body = call(route.app, environ)
        headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-type")]
        if not body.lstrip().startswith(b"<") or b"Envelope" not in body[:400]:
            # spyne answered with plain text (an error it did not turn into a fault): never pass it on
            log.error("%s by %s: spyne answered %s with a non-SOAP body: %r", operation, who, status, body[:200])
            spec = fault_for(RuntimeError("non-SOAP answer"))
            return _respond(start_response, "500 Internal Server Error", envelope(spec, route.namespace),
                            "text/xml; charset=utf-8")
        if not status.startswith("200"):  # a fault spyne raised itself (unknown operation, bad argument type)
            found = _FAULTCODE.search(body[:4096])
            log.info("%s by %s: %s", operation, who, found.group(1).decode("utf-8", "replace") if found else status)
        return _respond(start_response, status, body, "text/xml; charset=utf-8", headers)


# ----------------------------------------------------------------------------------------------- helpers

def _too_large(size: int, cap: int) -> LimitExceeded:
    error = LimitExceeded(f"request of {size} bytes is larger than the {cap} bytes allowed ([api] "
                          "max_request_bytes); submit large descriptions with workflowUrl")
    error.status = "413 Payload Too Large"  # type: ignore[attr-defined]
    return error


def _parse(body: bytes, per_element: int = MAX_ATTRIBUTES_PER_ELEMENT, total: int = MAX_ATTRIBUTES) -> Any:
    """The envelope's tree, refusing DTDs, too many attributes, non-SOAP-1.1 roots, bad Bodies, href
    references and headers it must but cannot understand."""
    head = body[:4096].lstrip()
    if b"<!DOCTYPE" in head.upper() or b"<!ENTITY" in head.upper():
        raise InvalidRequest("a DOCTYPE is not allowed in a SOAP message")
    try:
        root = etree.fromstring(body, _parser())
        # every attribute and namespace declaration has its '=', every element its '<': when there are few,
        # no count is needed
        if body.count(b"=") > min(per_element, total):
            _count_attributes(body, per_element, total)
        if body.count(b"<") > MAX_ELEMENTS and sum(1 for _ in root.iter()) > MAX_ELEMENTS:
            raise InvalidRequest(f"the envelope has more than {MAX_ELEMENTS} elements; at most {MAX_ELEMENTS} are "
                                 "accepted")
    except etree.XMLSyntaxError as exc:
        raise InvalidRequest(f"not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise InvalidRequest("a DOCTYPE is not allowed in a SOAP message")
    if root.tag == f"{{{SOAP12_ENV}}}Envelope":
        raise InvalidRequest("SOAP 1.2 envelopes are not accepted: use the SOAP 1.1 binding of the WSDL")
    if root.tag != f"{{{SOAP11_ENV}}}Envelope":
        raise InvalidRequest(f"the root element must be a SOAP 1.1 Envelope, not {root.tag!r}")
    children = [c for c in root if isinstance(c.tag, str)]
    bodies = [c for c in children if c.tag == f"{{{SOAP11_ENV}}}Body"]
    if len(bodies) != 1:
        raise InvalidRequest(f"a SOAP envelope needs exactly one Body, this one has {len(bodies)}")
    calls = [c for c in bodies[0] if isinstance(c.tag, str)]
    if len(calls) != 1:
        raise InvalidRequest(f"the SOAP Body must hold exactly one operation element, it holds {len(calls)}")
    for element in root.iter():
        if isinstance(element.tag, str) and ("href" in element.attrib or element.tag.endswith("}Include")):
            raise InvalidRequest("references (href, xop:Include) are not accepted: send values inline")
    _check_headers(root)
    return root


def _count_attributes(body: bytes, per_element: int, total: int) -> None:
    """Refuse an envelope with more attributes (namespace declarations included) on one element than
    ``per_element`` or in all than ``total``: one linear pass (lxml's own nsmap is per element and
    cumulative, so counting declarations through it would be quadratic)."""
    declared = seen = 0
    for event, element in etree.iterparse(io.BytesIO(body), events=("start-ns", "start"), resolve_entities=False,
                                          no_network=True, load_dtd=False, huge_tree=True):
        if event == "start-ns":
            declared += 1
            continue
        count, declared = len(element.attrib) + declared, 0
        seen += count
        if count > per_element:
            raise InvalidRequest(f"element <{etree.QName(element).localname}> has {count} attributes and namespace "
                                 f"declarations; at most {per_element} are accepted")
        if seen > total:
            raise InvalidRequest(f"the envelope has more than {total} attributes and namespace declarations; "
                                 f"at most {total} are accepted")


def _check_headers(root: Any) -> None:
    """SOAP 1.1 4.2.3: a header entry for this node marked mustUnderstand="1" must be one the broker
    processes, else the message is not processed at all."""
    header = root.find(f"{{{SOAP11_ENV}}}Header")
    for entry in () if header is None else header:
        if not isinstance(entry.tag, str) or entry.tag in UNDERSTOOD_HEADERS:
            continue
        if (entry.get(f"{{{SOAP11_ENV}}}mustUnderstand", "0").strip() in ("1", "true")
                and entry.get(f"{{{SOAP11_ENV}}}actor", ACTOR_NEXT) == ACTOR_NEXT):
            raise NotUnderstood(f"header {entry.tag} is marked mustUnderstand but this service does not "
                                "process it")


def _operation(root: Any) -> str:
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    call = next(c for c in body if isinstance(c.tag, str))
    return etree.QName(call).localname


def _basic(header: str) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise InvalidCredentials(f"HTTP authentication scheme {scheme!r} is not supported: use Basic")
    try:
        name, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidCredentials("malformed HTTP Basic credentials") from None
    if not sep:
        raise InvalidCredentials("malformed HTTP Basic credentials")
    return name, password


def _username_token(root: Any) -> tuple[str, str] | None:
    token = root.find(f"{{{SOAP11_ENV}}}Header/{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if token is None:
        return None
    name = token.findtext(f"{{{WSSE}}}Username")
    password = token.find(f"{{{WSSE}}}Password")
    if name is None or password is None:
        raise InvalidCredentials("a UsernameToken needs a Username and a Password")
    kind = password.get("Type", PASSWORD_TEXT)
    if kind != PASSWORD_TEXT:
        raise InvalidCredentials("only PasswordText UsernameTokens are supported (use TLS to protect them)")
    return name.strip(), password.text or ""


def _status(code: str) -> str:
    if code == "Client.InvalidCredentials":
        return "401 Unauthorized"
    # SOAP 1.1 over HTTP: a fault is answered with 500, whatever its cause
    return "500 Internal Server Error"


def _respond(start_response: StartResponse, status: str, body: bytes, content_type: str,
             headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            *(headers or [])])
    return [body]
