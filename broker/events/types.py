"""Event types and levels: the one table of what the broker records.

Every event is a row in ``events`` (queryable later with ``lastId`` paging) written in the same transaction
as the state change it describes, together with its ``outbox`` row. A workflow's ``eventLevel`` chooses
which events are *published* on the bus: an event is published when its level is at or below the
workflow's level (ERROR < INFO < STATUS < PROGRESS < DEBUG). History is kept whatever the level.

=====================  ========  =========  ======================================================
type                   level     metadata   when
=====================  ========  =========  ======================================================
WORKFLOW_SUBMITTED     INFO      yes        a workflow was accepted and stored
WORKFLOW_STATE         INFO      yes        the workflow's derived state changed (ERROR if failed)
NODE_STATE             STATUS    no         a node changed state (ERROR if the new state is failed)
NODE_EXPANDED          INFO      yes        a parameterized node expanded into its members
NODE_SPAWNED           INFO      yes        a payload spawned nodes, now under its node (``@broker spawn``)
NODE_OUTPUT            INFO      yes        a payload reported an output property
NODE_PROGRESS          PROGRESS  no         a payload reported progress (percent and message)
NODE_RETRY             INFO      no         a failed attempt will be retried after a backoff
NODE_LAUNCH            DEBUG     no         launcher detail: host, pid or job id, work directory
ADMIN_ACTION           INFO      no         an owner/admin cancelled or restarted; an admin archived/deleted
SERVICE                INFO      no         a broker (serve, run, resume) started or stopped
=====================  ========  =========  ======================================================

Metadata events also go to the workflow's ``publishMetadataTo`` destination when it names one.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class EventLevel(IntEnum):
    ERROR = 0
    INFO = 1
    STATUS = 2
    PROGRESS = 3
    DEBUG = 4

    @classmethod
    def parse(cls, text: str) -> EventLevel:
        return cls[text.upper()]


class EventType(StrEnum):
    WORKFLOW_SUBMITTED = "WORKFLOW_SUBMITTED"
    WORKFLOW_STATE = "WORKFLOW_STATE"
    NODE_STATE = "NODE_STATE"
    NODE_EXPANDED = "NODE_EXPANDED"
    NODE_SPAWNED = "NODE_SPAWNED"
    NODE_OUTPUT = "NODE_OUTPUT"
    NODE_PROGRESS = "NODE_PROGRESS"
    NODE_RETRY = "NODE_RETRY"
    NODE_LAUNCH = "NODE_LAUNCH"
    ADMIN_ACTION = "ADMIN_ACTION"
    SERVICE = "SERVICE"


#: the level of each event type (see :func:`level_of` for the ERROR promotion of failures)
LEVELS: dict[EventType, EventLevel] = {
    EventType.WORKFLOW_SUBMITTED: EventLevel.INFO,
    EventType.WORKFLOW_STATE: EventLevel.INFO,
    EventType.NODE_STATE: EventLevel.STATUS,
    EventType.NODE_EXPANDED: EventLevel.INFO,
    EventType.NODE_SPAWNED: EventLevel.INFO,
    EventType.NODE_OUTPUT: EventLevel.INFO,
    EventType.NODE_PROGRESS: EventLevel.PROGRESS,
    EventType.NODE_RETRY: EventLevel.INFO,
    EventType.NODE_LAUNCH: EventLevel.DEBUG,
    EventType.ADMIN_ACTION: EventLevel.INFO,
    EventType.SERVICE: EventLevel.INFO,
}

METADATA: frozenset[EventType] = frozenset(
    {EventType.WORKFLOW_SUBMITTED, EventType.WORKFLOW_STATE, EventType.NODE_EXPANDED, EventType.NODE_SPAWNED,
     EventType.NODE_OUTPUT})


def level_of(event_type: EventType, state: str | None = None) -> EventLevel:
    """The level of an event; a state change into ``failed`` is an ERROR whatever its type's level."""
    if state == "failed" and event_type in (EventType.NODE_STATE, EventType.WORKFLOW_STATE):
        return EventLevel.ERROR
    return LEVELS[event_type]


def published(event_level: EventLevel, workflow_level: EventLevel) -> bool:
    """Whether an event at ``event_level`` is published for a workflow that asked for ``workflow_level``."""
    return event_level <= workflow_level
