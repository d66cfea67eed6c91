"""Where events are published: the destinations of the bus, decided once for every writer of events.

- ``/topic/broker.events`` carries every published event; it is meant for admins.
- ``/topic/broker.user.<user>`` carries one user's events (user names never contain a destination
  wildcard or separator: broker.ids.USER_NAME_RE).
- A workflow's ``publishMetadataTo`` destination receives its metadata events, whatever its event level.
  It must be ``/topic/NAME`` or ``/queue/NAME`` (NAME of safe characters: no header injection, no
  wildcard), never one of the broker's own ``broker.*`` topics (every event, each user's), and start with
  one of the operator's ``[events] metadata_destinations`` prefixes (:func:`metadata_destination_problem`).

An event above its workflow's event level is kept in the history but queued for no destination.
"""

from __future__ import annotations

import re

from broker.events.types import METADATA, EventLevel, EventType, published

#: every published event
ALL_EVENTS_TOPIC = "/topic/broker.events"
#: the form of a publishMetadataTo destination (the XSD's Destination type)
METADATA_DESTINATION_RE = re.compile(r"/(?:topic|queue)/([A-Za-z0-9_.-]{1,200})")
#: destination names kept for the broker's own topics
RESERVED_NAME_PREFIX = "broker."


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


def metadata_destination_problem(value: str, allowed: tuple[str, ...] | None = None) -> str | None:
    """Why ``value`` may not be a workflow's publishMetadataTo destination, or None when it may.

    ``allowed``: the ``[events] metadata_destinations`` prefixes; None checks only the form and the
    reserved names (``broker validate``, which knows no operator's policy).
    """
    found = METADATA_DESTINATION_RE.fullmatch(value)
    if found is None:
        return (f"publishMetadataTo {value!r} is not a destination: expected /topic/NAME or /queue/NAME, NAME "
                "of 1 to 200 letters, digits, '_', '.' or '-'")
    if found.group(1).startswith(RESERVED_NAME_PREFIX):
        return (f"publishMetadataTo {value!r} names one of the broker's own topics ({RESERVED_NAME_PREFIX}*): "
                "choose another destination")
    if allowed is not None and not any(value.startswith(prefix) for prefix in allowed):
        where = ", ".join(allowed) if allowed else "none are allowed"
        return f"publishMetadataTo {value!r} is not an allowed destination ([events] metadata_destinations: {where})"
    return None
