"""Requests and answers of the dashboard: query strings, forms, cookies, and the headers every answer has.

Forms are bounded: :data:`MAX_FORM_BYTES` for a urlencoded form; a multipart form (the description upload) at
most the API's ``[api] max_request_bytes``, which the HTTP server enforces before the request gets here.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.cookies
import json
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: largest urlencoded form read (login, actions)
MAX_FORM_BYTES = 64 * 1024
#: scripts, styles, images, connections: this server only; nothing inline; no framing
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "same-origin"), ("X-Frame-Options", "DENY")]


@dataclass
class Request:
    """What a page needs of one request."""

    environ: dict[str, Any]
    method: str
    path: str
    query: dict[str, str]
    cookies: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)
    #: the user's session (broker.ui.sessions.Session), None before login
    session: Any = None

    @classmethod
    def of(cls, environ: dict[str, Any]) -> Request:
        query = {k: v for k, v in urllib.parse.parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)}
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        try:
            jar.load(environ.get("HTTP_COOKIE", ""))
        except http.cookies.CookieError:
            pass  # a malformed cookie header: as if there were none
        path = environ.get("PATH_INFO", "")
        return cls(environ, environ.get("REQUEST_METHOD", "GET"), path, query,
                   {k: m.value for k, m in jar.items()})

    def read_form(self) -> dict[str, str]:
        """The POSTed form's fields (urlencoded or multipart; a file field gives its content as text)."""
        length = int(self.environ.get("CONTENT_LENGTH") or 0)
        body = self.environ["wsgi.input"].read(length) if length else b""
        kind = self.environ.get("CONTENT_TYPE", "")
        if kind.startswith("multipart/form-data"):
            self.form = multipart(kind, body)
        elif len(body) <= MAX_FORM_BYTES:
            self.form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return self.form

    @property
    def user(self) -> Any:
        return None if self.session is None else self.session.user


def multipart(content_type: str, body: bytes) -> dict[str, str]:
    """Fields of a multipart/form-data body (the email parser: cgi is gone from newer Pythons)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name or name in fields:
            continue
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = payload.decode("utf-8", "replace")
    return fields


StartResponse = Callable[..., Any]


def respond(start_response: StartResponse, status: str, body: bytes, content_type: str,
            headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *SECURITY_HEADERS, *(headers or [])])
    return [body]


def html(start_response: StartResponse, text: str, status: str = "200 OK",
         headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    return respond(start_response, status, text.encode("utf-8"), "text/html; charset=utf-8", headers)


def as_json(start_response: StartResponse, value: Any, status: str = "200 OK") -> Iterable[bytes]:
    body = json.dumps(value, separators=(",", ":"), default=str).encode("utf-8")
    return respond(start_response, status, body, "application/json", None)


def redirect(start_response: StartResponse, location: str,
             headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    """303 See Other (after a POST the browser GETs the new page)."""
    return respond(start_response, "303 See Other", b"", "text/plain; charset=utf-8",
                   [("Location", location), *(headers or [])])


def session_cookie(name: str, token: str, *, secure: bool, max_age: int | None = None,
                   path: str = "/ui") -> tuple[str, str]:
    """The Set-Cookie header of a session (an empty token with max_age 0 clears it)."""
    parts = [f"{name}={token}", f"Path={path}", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if secure:
        parts.append("Secure")
    return "Set-Cookie", "; ".join(parts)
