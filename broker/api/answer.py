"""Answering one complete request: the WSGI environ, the application, the answer written with a deadline.

The request threads of :mod:`broker.api.httpd` call :func:`answer`; it runs the application (the edge) and
writes the whole answer with a deadline of ``header_timeout`` plus the answer's size at ``min_body_rate``,
so a client that does not read its answer holds a request thread that long at most.
"""

from __future__ import annotations

import email.utils
import io
import socket
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from broker.api.intake import Intake, Request

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class Limits:
    """What a connection may take: the ``[api]`` settings the server enforces."""

    header_timeout: float = 10.0
    min_body_rate: int = 1024
    max_pending_per_address: int = 8
    max_body: int = 16 * 1024**2
    drain_timeout: float = 30.0


@dataclass(eq=False, slots=True)
class Connection:
    """One client connection and the request being received on it."""

    sock: socket.socket
    address: str
    port: int
    intake: Intake
    #: when the current request could start (accepted, or previous answer written)
    since: float
    #: when the body began to be read (None before the head is complete or while waiting for memory)
    body_since: float | None = None
    #: bytes of the body when body_since was set
    body_start: int = 0
    #: whether it counts against its address's pending connections
    pending: bool = False
    #: bytes of the memory budget it holds
    reserved: int = 0
    #: a request thread has it
    busy: bool = False
    #: refused: reading and dropping until this time, then closed
    linger_until: float | None = None


def call(app: App, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status, headers, whole body) of a WSGI application's answer (500 if it never started one)."""
    captured: list[Any] = ["500 Internal Server Error", []]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., None]:
        captured[:] = [status, headers]
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured[0], captured[1], body


def answer(conn: Connection, request: Request, app: App, bind_addr: tuple[Any, ...], limits: Limits) -> bool:
    """Run the application and write its answer; whether the connection stays open."""
    status, headers, body = call(app, environ(conn, request, bind_addr))
    keep = not request.close and not any(k.lower() == "connection" and "close" in v.lower() for k, v in headers)
    headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
    start = head(status, len(body), close=not keep, headers=headers)
    payload = start if request.method == "HEAD" else start + body if len(body) < 65536 else None
    conn.sock.setblocking(True)
    conn.sock.settimeout(limits.header_timeout + len(body) / max(limits.min_body_rate, 1))
    if payload is not None:
        conn.sock.sendall(payload)
    else:
        conn.sock.sendall(start)
        conn.sock.sendall(body)
    return keep


def head(status: str, length: int, *, close: bool, headers: list[tuple[str, str]] | None = None) -> bytes:
    """The status line and fields of an answer of ``length`` bytes (a SOAP content type unless given)."""
    lines = [f"HTTP/1.1 {status}", f"Date: {email.utils.formatdate(usegmt=True)}", "Server: workflow-broker",
             *(f"{k}: {v}" for k, v in headers or [("Content-Type", "text/xml; charset=utf-8")]),
             f"Content-Length: {length}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def environ(conn: Connection, request: Request, bind_addr: tuple[Any, ...]) -> dict[str, Any]:
    """The WSGI environ of a request whose body has been read (``wsgi.input`` holds it)."""
    target = request.target
    if "://" in target:  # absolute form: keep the path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path, _, query = target.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method, "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(path).decode("latin-1"), "QUERY_STRING": query,
        "SERVER_NAME": str(bind_addr[0]), "SERVER_PORT": str(bind_addr[1]), "SERVER_PROTOCOL": request.version,
        "REMOTE_ADDR": conn.address, "REMOTE_PORT": str(conn.port),
        "CONTENT_LENGTH": str(request.oversized if request.oversized is not None else len(request.body)),
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }
    for name, value in request.fields:
        if name == "content-type":
            env["CONTENT_TYPE"] = value
        elif name != "content-length":
            key = "HTTP_" + name.upper().replace("-", "_")
            env[key] = f"{env[key]}, {value}" if key in env else value
    return env


__all__ = ["App", "Connection", "Limits", "answer", "call", "environ", "head"]
