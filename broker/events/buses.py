"""The publisher of ``[events] url``, chosen by its scheme: ``memory://`` (in this process), ``stomp://`` or
``stomp+ssl://`` (a STOMP broker).

A module of its own, above both kinds of publisher: the STOMP publisher is built on the types of
:mod:`broker.events.publishers`, and the STOMP client library is imported only when a STOMP bus is configured.
"""

from __future__ import annotations

from broker.config import EventsSettings
from broker.errors import ConfigError
from broker.events.publishers import MemoryBus, MemoryPublisher, Publisher, parse_stomp_url


def open_publisher(settings: EventsSettings) -> Publisher:
    """The publisher of ``[events] url``, by its scheme. Raises ConfigError for an unusable URL."""
    url = settings.url.strip()
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return MemoryPublisher(MemoryBus.named(url.partition("://")[2]))
    if scheme in ("stomp", "stomp+ssl"):
        from broker.events.stompbus import StompPublisher

        return StompPublisher(parse_stomp_url(url), settings, tls=scheme == "stomp+ssl")
    raise ConfigError(f"[events] url: unsupported bus URL {url!r} (expected stomp://host:port, "
                      "stomp+ssl://host:port or memory://name)")


__all__ = ["open_publisher"]
