"""Reading HTTP/1.1 requests from bytes as they arrive: the request head, then a body of known length or
chunked. Pure logic (no sockets, no clock): :mod:`broker.api.httpd` feeds each connection's bytes to an
:class:`Intake` and hands a :class:`Request` to a request thread only once it is complete.

What a request may be, refused otherwise with an :class:`HttpError` (an HTTP status and one line):

* a head (request line and header fields) of at most :data:`MAX_HEAD_BYTES` and :data:`MAX_FIELDS`
  fields; HTTP/1.0 or HTTP/1.1; no obsolete line folding; no whitespace before a field's colon;
* a body framed by one ``Content-Length`` or by ``Transfer-Encoding: chunked``, never both (a request
  smuggling trick); a body longer than ``max_body`` is not read at all: the request goes on with its
  declared length and no body, so the edge answers it (413) and the connection is closed after the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: largest request head (request line and header fields)
MAX_HEAD_BYTES = 64 * 1024
#: most header fields in one request
MAX_FIELDS = 100
#: longest chunk-size line of a chunked body
MAX_CHUNK_LINE = 1024

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/(\d)\.(\d)")
_LINE_END = re.compile(rb"\r?\n")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


class HttpError(Exception):
    """Raised for a request that cannot be read: ``status`` is the answer's HTTP status line."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Request:
    """A complete request: what the WSGI environ is built from."""

    method: str
    target: str
    version: str
    #: header fields in order, names lower-cased, values decoded as latin-1
    fields: list[tuple[str, str]]
    body: bytes = b""
    #: the declared length of a body too long to read (the edge refuses it); None when the body was read
    oversized: int | None = None
    #: whether the connection must close after the answer
    close: bool = False

    def header(self, name: str) -> str | None:
        """The value of field ``name`` (lower case); repeated fields joined with ', '."""
        values = [v for k, v in self.fields if k == name]
        return ", ".join(values) if values else None


def parse_head(data: bytes) -> Request:
    """The request line and fields of a head (without its blank line). Raises HttpError."""
    lines = _LINE_END.split(data)
    found = _REQUEST_LINE.fullmatch(lines[0])
    if found is None:
        raise HttpError("400 Bad Request", "malformed request line")
    method, target, major, minor = found.groups()
    if (major, minor) not in ((b"1", b"1"), (b"1", b"0")):
        raise HttpError("505 HTTP Version Not Supported", "only HTTP/1.0 and HTTP/1.1 are served")
    if len(lines) - 1 > MAX_FIELDS:
        raise HttpError("431 Request Header Fields Too Large", f"more than {MAX_FIELDS} header fields")
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # also catches obsolete line folding (a line starting with whitespace) and "Name :"
            raise HttpError("400 Bad Request", "malformed header field")
        fields.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    version = f"HTTP/{major.decode()}.{minor.decode()}"
    request = Request(method.decode("ascii"), target.decode("latin-1"), version, fields)
    connection = (request.header("connection") or "").lower()
    request.close = version == "HTTP/1.0" or "close" in connection
    return request


@dataclass(slots=True)
class Intake:
    """The request being received on one connection: feed bytes, get a Request once it is complete."""

    max_body: int
    buffer: bytearray = field(default_factory=bytearray)
    request: Request | None = None
    #: body bytes the request still needs (known length), or None while chunked or before the head
    remaining: int | None = None
    chunked: bool = False
    body: bytearray = field(default_factory=bytearray)
    #: bytes of this request received so far (head and body), for the body rate
    received: int = 0
    _chunk_left: int = -1  # bytes left of the current chunk; -1: a size line comes next; -2: trailers
    _scanned: int = 0  # bytes of buffer already searched for the end of the head

    @property
    def started(self) -> bool:
        """Whether any byte of a request has arrived."""
        return bool(self.buffer) or self.request is not None

    @property
    def in_body(self) -> bool:
        return self.request is not None

    def body_needs(self) -> int:
        """Bytes of buffer the body will take at most (for the server's memory budget)."""
        if self.request is None or self.request.oversized is not None:
            return 0
        return self.max_body + 1 if self.chunked else len(self.body) + (self.remaining or 0)

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)

    def take(self) -> Request | None:
        """The complete request if the bytes fed so far hold one (what follows stays for the next).

        Raises HttpError. Call again after each feed.
        """
        if self.request is None:
            if not self._head():
                return None
        request = self.request
        assert request is not None
        if request.oversized is None and not (self._chunks() if self.chunked else self._fixed()):
            return None
        request.body = bytes(self.body)
        # ready for the next request on the connection; bytes already here (pipelined) stay in the buffer
        self.request, self.remaining, self.chunked, self.body = None, None, False, bytearray()
        self.received, self._chunk_left = len(self.buffer), -1
        return request

    def _head(self) -> bool:
        while self.buffer.startswith(b"\n") or self.buffer.startswith(b"\r\n"):
            del self.buffer[:1 if self.buffer.startswith(b"\n") else 2]  # blank lines first (RFC 9112 2.2)
        # search only what is new (and the 3 bytes before it): a head arriving byte by byte stays linear
        end = _HEAD_END.search(self.buffer, max(0, self._scanned - 3), MAX_HEAD_BYTES + 4)
        if end is None:
            self._scanned = len(self.buffer)
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise HttpError("431 Request Header Fields Too Large",
                                f"request head larger than {MAX_HEAD_BYTES} bytes")
            return False
        self._scanned = 0
        request = parse_head(bytes(self.buffer[:end.start()]))
        del self.buffer[:end.end()]
        self._frame(request)
        self.request = request
        return True

    def _frame(self, request: Request) -> None:
        encoding = request.header("transfer-encoding")
        lengths = {v.strip() for k, v in request.fields if k == "content-length"}
        if encoding is not None:
            if lengths:
                raise HttpError("400 Bad Request", "both Content-Length and Transfer-Encoding")
            if encoding.lower() != "chunked":
                raise HttpError("501 Not Implemented", f"transfer coding {encoding!r} is not supported")
            self.chunked = True
            return
        if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
            raise HttpError("400 Bad Request", "invalid Content-Length")
        length = int(lengths.pop()) if lengths else 0
        if length > self.max_body:
            request.oversized, request.close = length, True
            return
        self.remaining = length

    def _fixed(self) -> bool:
        assert self.remaining is not None
        take = self.buffer[:self.remaining]
        self.body += take
        del self.buffer[:len(take)]
        self.remaining -= len(take)
        return self.remaining == 0

    def _chunks(self) -> bool:
        buf = self.buffer
        while True:
            if self._chunk_left >= 0:
                if self._chunk_left:
                    take = buf[:self._chunk_left]
                    self.body += take
                    del buf[:len(take)]
                    self._chunk_left -= len(take)
                    if self._chunk_left:
                        return False
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise HttpError("400 Bad Request", "malformed chunked body")
                del buf[:2]
                self._chunk_left = -1
                if len(self.body) > self.max_body:
                    # the edge sees more than it accepts and answers 413; nothing more is read
                    assert self.request is not None
                    self.request.close = True
                    return True
            end = buf.find(b"\n", 0, MAX_CHUNK_LINE)
            if end < 0:
                if len(buf) >= MAX_CHUNK_LINE:
                    raise HttpError("400 Bad Request", "chunk size line too long")
                return False
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[:end + 1]
            if self._chunk_left == -2:  # trailer fields, ignored, until the blank line
                if not line:
                    return True
                continue
            size = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size):
                raise HttpError("400 Bad Request", "malformed chunk size")
            self._chunk_left = int(size, 16)
            if self._chunk_left == 0:
                self._chunk_left = -2


__all__ = ["HttpError", "Intake", "MAX_HEAD_BYTES", "Request", "parse_head"]
