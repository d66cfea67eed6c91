"""Staging transports beyond ``file://``: ``sftp://host/path`` and ``http(s)://`` stage-in from allowed places.

:func:`for_user` makes the :class:`broker.transfers.Transports` of one user (the stage worker asks the resources
for the node owner's, per node); nothing is registered anywhere.

``sftp://HOST/PATH`` goes through the SSH pool's connection of the node owner's account on catalogue host
HOST, so a transfer reads and writes only what that account may (``PATH`` is absolute; ``sftp://HOST/~/x``
is relative to the account's home). The user is an argument of every transfer: none runs as anyone.
Paths with ``..`` segments are refused, and a symlink is never downloaded.

``http://`` and ``https://`` stage-in only from the URL prefixes of ``[hosts] http_allow``. The host name is
resolved once and every address checked: loopback, private, link-local, multicast and reserved addresses
are refused unless ``[hosts] http_allow_private`` is on; the connection then goes to the checked address
(no second lookup for a rebinding DNS to change). Redirects are not followed. Sizes are bounded (the
announced length and the bytes actually read).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

from broker import transfers
from broker.atomic import atomic_write
from broker.errors import ResourceError

if TYPE_CHECKING:
    import http.client


class Resources(Protocol):
    """What sftp:// needs of :class:`broker.resources.Resources` (which installs these transports: a
    protocol, so that this module does not import the package that imports it)."""

    @property
    def pool(self) -> Any: ...

    accounts: Any


CHUNK = 1024 * 1024


def _refuse(message: str) -> ResourceError:
    return ResourceError(message, retryable=False)


def _sftp_target(uri: str) -> tuple[str, str]:
    """(catalogue host, remote path) of an sftp:// URI; refuses '..', NUL and user/port parts."""
    parts = urlsplit(uri)
    if parts.scheme != "sftp" or not parts.hostname or parts.username or parts.port or parts.query or \
            parts.fragment:
        raise _refuse(f"{uri!r} is not sftp://HOST/PATH (HOST: a host of the catalogue; no user, port or query)")
    path = unquote(parts.path)
    if not path or path == "/" or "\0" in path or ".." in path.split("/"):
        raise _refuse(f"{uri!r}: the path must be a file path without '..'")
    if path.startswith("/~/"):
        path = path[3:]  # relative: the SFTP server resolves it against the account's home
    return parts.hostname, path


class SftpTransport:
    """sftp:// through the pooled connection of a user's account on the named host."""

    def __init__(self, resources: Resources):
        self._resources = resources

    def _shell(self, host_name: str, user: str):
        host = self._resources.catalogue.get(host_name)
        if host.ssh is None:
            raise _refuse(f"sftp://{host_name}/...: host '{host_name}' has no <ssh> in the catalogue")
        return self._resources.pool.shell(host, self._resources.accounts.account(user, host_name))

    def fetch(self, uri: str, target: Path, max_bytes: int, *, user: str) -> None:
        """Stage-in: download the remote file to ``target``, as ``user``'s account on the host."""
        host_name, path = _sftp_target(uri)
        self._shell(host_name, user).download(path, str(target), max_bytes)

    def push(self, source: Path, uri: str, max_bytes: int, *, user: str) -> None:
        """Stage-out: upload ``source`` to the remote path (atomically), as ``user``'s account on the host."""
        host_name, path = _sftp_target(uri)
        self._shell(host_name, user).upload(str(source), path, max_bytes)


# ------------------------------------------------------------------------------------------------ http

def _blocked(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast or
            address.is_reserved or address.is_unspecified or not address.is_global)


def _same_or_below(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


class HttpTransport:
    """http(s):// stage-in from allowed URL prefixes, never from internal addresses unless configured."""

    def __init__(self, allow: Sequence[str], *, allow_private: bool = False, timeout: float = 30.0,
                 resolver=socket.getaddrinfo, ssl_context: ssl.SSLContext | None = None):
        self._allow = [urlsplit(a) for a in allow]
        self._allow_private = allow_private
        self._timeout = timeout
        self._resolve = resolver
        self._ssl = ssl_context
        self._ssl_lock = threading.Lock()

    def _context(self) -> ssl.SSLContext:
        """The TLS context, made on the first https:// fetch: loading the system's CA certificates costs about
        30 ms that every `broker run` would pay at start, most of them never fetching anything."""
        with self._ssl_lock:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return self._ssl

    def check(self, uri: str) -> tuple[str, str, int, str, str]:
        """(scheme, host, port, request target, address to connect to) of an allowed URI, else ResourceError."""
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise _refuse(f"{uri!r} is not an http(s):// URL without credentials")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if ".." in unquote(path).split("/") or "\\" in unquote(path):
            raise _refuse(f"{uri!r}: '..' in the path is refused")
        for allowed in self._allow:
            allowed_port = allowed.port or (443 if allowed.scheme == "https" else 80)
            if (allowed.scheme, allowed.hostname, allowed_port) == (parts.scheme, parts.hostname, port) and \
                    _same_or_below(path, allowed.path or "/"):
                break
        else:
            listed = " ".join(a.geturl() for a in self._allow) or "none ([hosts] http_allow is empty)"
            raise _refuse(f"{uri} is not under an allowed location (allowed: {listed})")
        try:
            infos = self._resolve(parts.hostname, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ResourceError(f"cannot resolve {parts.hostname}: {exc}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        if not addresses:
            raise ResourceError(f"{parts.hostname} has no address")
        if not self._allow_private:
            for address in addresses:
                if _blocked(address):
                    raise _refuse(f"{uri}: {parts.hostname} resolves to {address}, an internal address "
                                  "(allowed only with [hosts] http_allow_private)")
        target = path + (f"?{parts.query}" if parts.query else "")
        return parts.scheme, parts.hostname, port, target, str(addresses[0])

    def fetch(self, uri: str, target: Path, max_bytes: int) -> None:
        """Stage-in: GET ``uri`` into ``target`` (atomically), at most ``max_bytes``."""
        import http.client  # with email's parser: on the first http(s):// fetch, not at every engine start

        scheme, host, port, path, address = self.check(uri)
        connection = _Pinned(scheme, host, port, address, self._timeout,
                             self._context() if scheme == "https" else None)
        try:
            connection.request("GET", path, headers={"Host": host if port in (80, 443) else f"{host}:{port}",
                                                     "User-Agent": "workflow-broker"})
            response = connection.getresponse()
            if response.status != 200:
                where = f" (to {response.getheader('Location')}; redirects are not followed)" \
                    if 300 <= response.status < 400 else ""
                raise ResourceError(f"{uri}: HTTP {response.status} {response.reason}{where}",
                                    retryable=response.status >= 500 or response.status == 429)
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise _refuse(f"{uri} is {length} bytes, over the staging limit of {max_bytes}")
            size = 0
            with atomic_write(target) as out:
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _refuse(f"{uri} is over the staging limit of {max_bytes} bytes")
                    out.write(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise ResourceError(f"{uri}: {exc}") from None
        finally:
            connection.close()


class _Pinned:
    """An HTTP(S) connection to an address checked beforehand (TLS still verifies the host name)."""

    def __init__(self, scheme: str, host: str, port: int, address: str, timeout: float,
                 context: ssl.SSLContext | None):
        import http.client

        if scheme == "https":
            self._conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                                                 context=context)
        else:
            self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn = self._conn

        def connect() -> None:
            sock = socket.create_connection((address, port), timeout)
            if isinstance(conn, http.client.HTTPSConnection):
                assert context is not None
                sock = context.wrap_socket(sock, server_hostname=host)
            conn.sock = sock

        conn.connect = connect  # type: ignore[method-assign]

    def request(self, method: str, path: str, headers: dict[str, str]) -> None:
        self._conn.putrequest(method, path, skip_host=True)
        for name, value in headers.items():
            self._conn.putheader(name, value)
        self._conn.endheaders()

    def getresponse(self) -> http.client.HTTPResponse:
        return self._conn.getresponse()

    def close(self) -> None:
        self._conn.close()


# ------------------------------------------------------------------------------------------ per user

def for_user(sftp: SftpTransport, web: HttpTransport, user: str) -> transfers.Transports:
    """The transports of ``user``'s staging: sftp:// (stage-in and out) as the user's accounts, http(s)://
    (stage-in)."""
    return transfers.Transports(fetch={"sftp": functools.partial(sftp.fetch, user=user), "http": web.fetch,
                                       "https": web.fetch},
                                push={"sftp": functools.partial(sftp.push, user=user)})


__all__ = ["HttpTransport", "SftpTransport", "for_user"]
