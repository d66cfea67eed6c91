"""SQLAlchemy 2 mapped classes: the database schema. No queries here (they live in ``repository``).

Times are timezone-aware UTC (:class:`UTCDateTime`); event ids are 64-bit and, because one writer
commits every event, increase in commit order (the ``lastId`` paging of the API relies on it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, MetaData, SmallInteger, String,
                        Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# the column types and partial indexes of the models (imported from here by the rest of the broker too)
from broker.persistence.coltypes import (PARTIAL_INDEXES, BigId, UTCDateTime, partial_index,  # noqa: F401
                                         postgresql_partial_indexes)

#: constraint names are deterministic, so alembic migrations can refer to them on every database
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``[a-z][a-z0-9_-]*`` (see broker.ids.USER_NAME_RE): never a bus destination wildcard
    name: Mapped[str] = mapped_column(String(32), unique=True)
    #: "user" or "admin"
    role: Mapped[str] = mapped_column(String(16), default="user")
    #: salted slow hash (set by ``broker user add``); None: the user cannot log in to the API
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Account(Base):
    """The account (and key) a broker user's nodes run under on one host."""

    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("user_id", "host"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String(253))
    account: Mapped[str] = mapped_column(String(64))
    key_path: Mapped[str | None] = mapped_column(String(1024))


class Workflow(Base):
    __tablename__ = "workflows"
    __table_args__ = (
        UniqueConstraint("owner_id", "label", name="uq_workflows_owner_label"),
        UniqueConstraint("owner_id", "request_id", name="uq_workflows_owner_request"),
        Index("ix_workflows_state_finished", "state", "finished_at"),
        # an estimate's history: the newest earlier runs of a workflow of the same name
        Index("ix_workflows_name", "name", "id"),
        # AUTOINCREMENT: SQLite would otherwise give a new workflow the id of a deleted last one, and
        # anything still holding the old id (a client, a cache) would mistake one for the other
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: opaque, URL- and file-name-safe (broker.ids.new_workflow_global_id)
    global_id: Mapped[str] = mapped_column(String(32), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    #: the client's ``workflowId``: a label unique per user, never a global id
    label: Mapped[str | None] = mapped_column(String(200))
    #: the client's request id: submitting it again returns this workflow instead of a new one
    request_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    experiment_id: Mapped[str | None] = mapped_column(String(200))
    #: the description exactly as submitted
    descriptor: Mapped[str] = mapped_column(Text)
    descriptor_sha256: Mapped[str] = mapped_column(String(64), index=True)
    #: the normalised WorkflowSpec as JSON (broker.description.model.to_json): profiles applied, files read
    plan: Mapped[str] = mapped_column(Text)
    #: broker.events.types.EventLevel value
    event_level: Mapped[int] = mapped_column(SmallInteger)
    #: higher runs first
    priority: Mapped[int] = mapped_column(Integer, default=0)
    publish_metadata_to: Mapped[str | None] = mapped_column(String(256))
    max_in_flight: Mapped[int | None] = mapped_column(Integer)
    #: the directory its attempts' work directories are created under (``<root>/<global id>/...``), as the
    #: submitting broker had it: a resume creates new attempts there too (None: derived from nothing, the
    #: workflow never launched before revision 0004)
    work_root: Mapped[str | None] = mapped_column(String(4096))
    #: the stored workflow it was submitted from (``broker run NAME@VERSION``), None for a file or a text
    origin_name: Mapped[str | None] = mapped_column(String(64))
    origin_version: Mapped[int | None] = mapped_column(Integer)
    #: the arguments it was bound with, ``[[name, value], ...]`` in parameter order; None: it declares none
    arguments: Mapped[Any | None] = mapped_column(JSON)
    #: broker.states.WorkflowState value
    state: Mapped[str] = mapped_column(String(16))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the last per-workflow event sequence number used
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    #: work-carrying nodes (execute nodes, unexpanded sweeps) and how many of them ended, as the writer
    #: committed them with the nodes: status reads take a workflow's progress from here, in any process
    #: (None: not written yet by a broker of revision 0011 or later; counted from the nodes then)
    nodes_total: Mapped[int | None] = mapped_column(Integer)
    nodes_done: Mapped[int | None] = mapped_column(Integer)
    submitted_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class StoredWorkflow(Base):
    """One version of a stored workflow: a checked description kept under a name, to run with arguments.

    Names are shared by every user (anyone may list, show and run them); the user who added a name's first
    version owns it: only they or an admin add versions or remove it. Versions count from 1 per name.
    """

    __tablename__ = "stored_workflows"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_stored_workflows_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}`` (broker.persistence.stored.NAME_RE): never '@' or '/'
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    #: None once that user is removed: then only an admin changes the name
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    #: the description exactly as added, with the SHA-256 of its UTF-8 encoding
    descriptor: Mapped[str] = mapped_column(Text)
    descriptor_sha256: Mapped[str] = mapped_column(String(64))
    #: the ``name`` attribute of the description's ``<workflow>``
    workflow_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Node(Base):
    """A node of a workflow: an execute node, a parameterized node ("sweep") or one member of a sweep."""

    __tablename__ = "nodes"
    __table_args__ = (
        UniqueConstraint("workflow_id", "path", name="uq_nodes_workflow_path"),
        Index("ix_nodes_workflow_state", "workflow_id", "state"),
        Index("ix_nodes_state", "state"),
        # AUTOINCREMENT: node ids of deleted workflows are never handed out again (see workflows)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    #: e.g. ``sweep[3]/step``; the node's global id is ``<workflow global id>/<path>``
    path: Mapped[str] = mapped_column(String(1024))
    #: the path without member indexes (``sweep/step``): which spec in the plan this node instantiates
    template: Mapped[str] = mapped_column(String(1024))
    #: "node", "sweep" or "member"
    kind: Mapped[str] = mapped_column(String(8))
    #: the enclosing group: the sweep of a member, the member of a body node; None at the top level
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    member_index: Mapped[int | None] = mapped_column(Integer)
    #: a member's own parameter values, as [[name, value], ...] (None on other nodes: a node's full set of
    #: bindings is those of every member around it, outer first)
    bindings: Mapped[Any | None] = mapped_column(JSON)
    #: broker.states.NodeState value
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: the current attempt, 0 before the first launch
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    #: automatic retries used since the node last started afresh (a restart resets it)
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: for a parameterized node: how many members it expanded into (None: not expanded yet); for an execute
    #: node whose payload spawned a fragment: how many nodes that added under it
    members: Mapped[int | None] = mapped_column(Integer)
    #: the fragment the current attempt spawned: {"file", "attempt", "nodes" (the specs' JSON form)}
    spawn: Mapped[Any | None] = mapped_column(JSON)
    #: the work directory of the current attempt
    workdir: Mapped[str | None] = mapped_column(String(4096))
    #: the last progress the payload reported, in percent
    progress: Mapped[float | None] = mapped_column(Float)
    host: Mapped[str | None] = mapped_column(String(253))
    #: pid or batch job id of the current attempt
    job_id: Mapped[str | None] = mapped_column(String(64))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    #: output properties reported by the payload: name -> JSON value
    outputs: Mapped[Any | None] = mapped_column(JSON)
    #: the last human-readable reason (why it failed, was skipped, ...)
    message: Mapped[str | None] = mapped_column(Text)
    #: when a node in retry_wait becomes ready again
    retry_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]


class Attempt(Base):
    """One attempt of a node: written by the writer with the node's transitions (launch intent, start, end).

    A node row holds only its current attempt; these rows keep every one. ``number`` is the node's ``attempt``
    counter when the intent was committed, so an adopted attempt (a broker restart) stays the same row.
    """

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("node_id", "number", name="uq_attempts_node_number"),
        # the history an estimate reads (a handful of workflows, one template or all), and a workflow's
        # attempts (its archive, its deletion's cascade); no time column in it: an attempt's end would move
        # its entry, on the writer's hot path
        Index("ix_attempts_history", "workflow_id", "template"),
        # AUTOINCREMENT: ids of deleted workflows' attempts are never handed out again (see nodes)
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    workflow_id: Mapped[int] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    #: the node's template (its path without member indexes), copied so the history needs no join on nodes
    template: Mapped[str] = mapped_column(String(1024))
    #: 1, 2, 3, ... per node
    number: Mapped[int] = mapped_column(Integer)
    #: the catalogue host, or login@host once it ran remotely
    host: Mapped[str | None] = mapped_column(String(253))
    #: the account it ran under, when the broker knows it (the login of a remote host)
    account: Mapped[str | None] = mapped_column(String(64))
    #: pid or batch job id
    job_id: Mapped[str | None] = mapped_column(String(64))
    workdir: Mapped[str | None] = mapped_column(String(4096))
    #: when its launch intent was committed
    queued_at: Mapped[dt.datetime | None]
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    exit_code: Mapped[int | None] = mapped_column(Integer)
    #: None while in flight; then "succeeded", "failed" (retried or not) or "cancelled"
    outcome: Mapped[str | None] = mapped_column(String(16))
    #: why it ended so (the node's message at its end)
    message: Mapped[str | None] = mapped_column(Text)


class Dependency(Base):
    """An edge of the DAG: ``child`` waits for ``parent`` (a node, or a whole sweep as a barrier)."""

    __tablename__ = "dependencies"
    __table_args__ = (Index("ix_dependencies_child", "child_id"),)

    parent_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("workflow_id", "seq", name="uq_events_workflow_seq"),
        # one workflow's events after a lastId, in id order, without scanning the workflow's whole history
        Index("ix_events_workflow_id", "workflow_id", "id"),
        # AUTOINCREMENT: SQLite would otherwise reuse the id of a deleted last row, and a client paging with
        # that lastId would miss the new event
        {"sqlite_autoincrement": True},
    )

    #: 64-bit, increasing in commit order: the ``lastId`` of the API's paging
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: None for service-level events
    workflow_id: Mapped[int | None] = mapped_column(ForeignKey("workflows.id", ondelete="CASCADE"))
    #: per-workflow sequence number, 1, 2, 3, ... (None for service-level events)
    seq: Mapped[int | None] = mapped_column(Integer)
    #: the node's path within the workflow (its global id is the workflow's global id + "/" + path)
    node_path: Mapped[str | None] = mapped_column(String(1024))
    #: who caused it: "submission", "staging", "monitoring", "elf", "admin:<user>", "user:<user>", ...
    actor: Mapped[str] = mapped_column(String(64))
    #: broker.events.types.EventLevel value
    level: Mapped[int] = mapped_column(SmallInteger)
    #: broker.events.types.EventType value
    type: Mapped[str] = mapped_column(String(32))
    #: the new state, for state-change events
    state: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: extra data (name -> JSON value): previous state, attempt, progress percent, output values, ...
    properties: Mapped[Any | None] = mapped_column(JSON)


class Outbox(Base):
    """Events waiting to be published: written with the event, marked sent after the bus's receipt."""

    __tablename__ = "outbox"
    __table_args__ = (
        # the relay scans only unsent rows; a partial index keeps that scan small however much was sent
        partial_index("ix_outbox_unsent", "id", where="sent_at IS NULL"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"), index=True)
    #: a bus destination such as /topic/broker.events
    destination: Mapped[str] = mapped_column(String(256))
    sent_at: Mapped[dt.datetime | None]


class Control(Base):
    """A command for the running broker (cancel, restart), written by another process."""

    __tablename__ = "control"
    __table_args__ = (partial_index("ix_control_pending", "id", where="applied_at IS NULL"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "cancel" or "restart"
    command: Mapped[str] = mapped_column(String(16))
    #: a workflow or node global id
    target: Mapped[str] = mapped_column(String(1100))
    #: who asked: "user:<name>" or "admin:<name>"
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[dt.datetime | None]
    #: "applied" or "error: ..."
    result: Mapped[str | None] = mapped_column(Text)


class ElfSession(Base):
    """The credentials of one node attempt on the API's push channel (``updateNodeStatus``).

    A remote elf authenticates with the session id and its secret; only a salted hash of the secret is kept.
    """

    __tablename__ = "elf_sessions"
    # AUTOINCREMENT: a session id is never handed out twice, even after its node was deleted
    __table_args__ = ({"sqlite_autoincrement": True},)

    #: 32-bit on the wire (``updateNodeStatus(Integer sessionId, ...)``)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    #: the attempt the session was created for: reports for any other attempt are stale
    attempt: Mapped[int] = mapped_column(Integer)
    #: "sha256$<salt hex>$<digest hex>" of the secret (a random 256-bit token, so a fast hash suffices)
    secret_hash: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class BrokerLease(Base):
    """The lease a broker on PostgreSQL holds to write (one row, id 1; see ``broker.persistence.lease``).

    Times come from the database's clock only, so the hosts' clocks never matter. A takeover increments
    ``epoch``: every commit of the holder checks its epoch in the same transaction.
    """

    __tablename__ = "broker_lease"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    #: who holds it, for messages: "broker run on HOST, pid N"; NULL when released
    holder: Mapped[str | None] = mapped_column(String(300))
    #: the holder's boot id and pid namespace: a broker on the same machine may check that its pid is gone
    machine: Mapped[str | None] = mapped_column(String(100))
    pid: Mapped[int | None] = mapped_column(Integer)
    #: the holder's start time in clock ticks since boot (/proc/PID/stat), so a reused pid is not taken for it
    pid_start: Mapped[int | None] = mapped_column(BigInteger)
    acquired_at: Mapped[dt.datetime | None]
    renewed_at: Mapped[dt.datetime | None]
    #: the lease is free from this time on unless renewed before it
    expires_at: Mapped[dt.datetime | None]
