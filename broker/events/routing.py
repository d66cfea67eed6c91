"""Where events are published: the destinations of the bus, decided once for every writer of events.

- ``/topic/broker.events`` carries every published event; it is meant for admins.
- ``/topic/broker.user.<user>`` carries one user's events (user names never contain a destination
  wildcard or separator: broker.ids.USER_NAME_RE).
- A workflow's ``publishMetadataTo`` destination receives its metadata events, whatever its event level.

An event above its workflow's event level is kept in the history but queued for no destination.
"""

from __future__ import annotations

from broker.events.types import METADATA, EventLevel, EventType, published

#: every published event
ALL_EVENTS_TOPIC = "/topic/broker.events"


def user_topic(user: str) -> str:
    """The destination of one user's events."""
    return f"/topic/broker.user.{user}"


def destinations(*, owner: str | None, workflow_level: EventLevel | int | None, metadata_to: str | None,
                 event_type: EventType, level: EventLevel | int) -> list[str]:
    """The destinations of one event; ``owner`` None means a service-level event (no workflow)."""
    if owner is None:
        return [ALL_EVENTS_TOPIC]
    targets = []
    if workflow_level is not None and published(EventLevel(level), EventLevel(workflow_level)):
        targets += [ALL_EVENTS_TOPIC, user_topic(owner)]
    if metadata_to and event_type in METADATA:
        targets.append(metadata_to)
    return list(dict.fromkeys(targets))
