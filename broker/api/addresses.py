"""Addresses of the API servers: ``[api] listen`` parsed, hosts as URLs show them, a WSDL's operations."""

from __future__ import annotations

from broker.errors import ConfigError


def parse_listen(listen: str, key: str = "listen") -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) -> (host, port); ``key`` names the setting in the error.
    Raises ConfigError."""
    host, sep, port = listen.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[api] {key}: invalid address {listen!r} (expected host:port, e.g. 127.0.0.1:8080)")
    return host, int(port)


def operations(wsdl: bytes) -> list[str]:
    """The operation names a WSDL declares (its portType's operations)."""
    from lxml import etree

    root = etree.fromstring(wsdl, etree.XMLParser(resolve_entities=False, no_network=True))
    return [str(name) for name in root.xpath("//*[local-name()='portType']/*[local-name()='operation']/@name")]


def url_host(host: str) -> str:
    """A host as a URL shows it: the machine's name for a wildcard address, an IPv6 one in brackets."""
    if host in ("0.0.0.0", "", "::"):
        import socket

        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host
