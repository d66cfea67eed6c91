"""The repository: queries and writes of users, workflows, nodes and events, one function per operation.

Callers own the transaction (``with factory.begin() as session:``); nothing here commits. Functions that
refuse an input (a bad user name, a taken label) check it before they write anything, so a refusal never
leaves a half-applied change in the caller's transaction.

Submission stores only the top level of a workflow: its execute nodes and its parameterized nodes
("sweeps"), which the engine expands into members when they become ready. Nodes and edges go in with Core
bulk inserts (a 100,000-node workflow takes seconds, not minutes); the ORM is used for single rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import BigInteger, Integer, Text, bindparam, func, insert, literal, select
from sqlalchemy.orm import Session

from broker.description.model import AnyNode, WorkflowSpec, to_json
from broker.errors import ConfigError, DescriptionError, LimitExceeded, NotFound, Problem, StateError
from broker.events.routing import destinations
from broker.events.types import EventLevel, EventType, level_of
from broker.ids import GLOBAL_ID_RE, USER_NAME_RE, new_workflow_global_id
from broker.persistence.models import Dependency, Event, Node, Outbox, User, UTCDateTime, Workflow, utcnow
from broker.states import NodeState, WorkflowState

WORKFLOWS = Workflow.__table__
NODES = Node.__table__
DEPENDENCIES = Dependency.__table__
EVENTS = Event.__table__
OUTBOX = Outbox.__table__

#: roles a user may have
ROLES = ("user", "admin")
#: rows per INSERT statement of a SQLite bulk insert (8 columns: well under its 32,766 bind parameters)
BULK_ROWS = 2000


# ------------------------------------------------------------------------------------------------ users

def ensure_user(session: Session, name: str, role: str = "user") -> User:
    """The user called ``name``, created with ``role`` if missing (an existing user keeps its role).

    Raises ConfigError for a name that does not match ``broker.ids.USER_NAME_RE`` or an unknown role.
    """
    if not isinstance(name, str) or not USER_NAME_RE.fullmatch(name):
        raise ConfigError(f"invalid user name {name!r}: a user name is 1 to 32 characters of a-z, 0-9, "
                          "'_' and '-', starting with a letter")
    if role not in ROLES:
        raise ConfigError(f"invalid role {role!r} for user {name}: expected one of {', '.join(ROLES)}")
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        user = User(name=name, role=role, created_at=utcnow())
        session.add(user)
        session.flush()
    return user


def get_user(session: Session, name: str) -> User:
    """The user called ``name``. Raises NotFound."""
    user = session.scalars(select(User).where(User.name == name)).one_or_none()
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


# ------------------------------------------------------------------------------------------- submission

def request_known(session: Session, owner: User, request_id: str) -> bool:
    """Whether ``owner`` used ``request_id`` before (:func:`submit_workflow` then stores nothing)."""
    return session.scalar(select(Workflow.id).where(Workflow.owner_id == owner.id,
                                                    Workflow.request_id == request_id)) is not None


def submit_workflow(session: Session, spec: WorkflowSpec, *, descriptor: str, owner: User,
                    label: str | None = None, request_id: str | None = None, experiment_id: str | None = None,
                    event_level: EventLevel | str | None = None, priority: int | None = None,
                    publish_metadata_to: str | None = None, max_in_flight: int | None = None,
                    actor: str = "submission", now: dt.datetime | None = None, publishing: bool = True,
                    work_root: str | None = None, origin: tuple[str, int] | None = None,
                    global_id: str | None = None, plan: str | None = None) -> Workflow:
    """Store a validated workflow: its row, its top-level nodes and edges, and its WORKFLOW_SUBMITTED event.

    ``descriptor`` is kept verbatim with its SHA-256 (of its UTF-8 encoding); ``origin`` is the stored
    workflow's (name, version) it came from, and the spec's bound arguments are recorded with it. ``event_level``, ``priority``,
    ``publish_metadata_to`` and ``max_in_flight`` override the description's values when given. A
    ``request_id`` this owner used before returns that workflow and stores nothing. Raises StateError when
    ``label`` is already used by one of the owner's workflows, LimitExceeded for a name, label, request id,
    experiment id or destination longer than its column, DescriptionError when the spec's top level repeats
    a node id or depends on a missing one. ``plan``: ``to_json(spec)`` when the caller has it already.
    """
    if request_id is not None:
        existing = session.scalars(select(Workflow).where(Workflow.owner_id == owner.id,
                                                          Workflow.request_id == request_id)).one_or_none()
        if existing is not None:
            return existing
    if label is not None:
        taken = session.scalars(select(Workflow.global_id).where(Workflow.owner_id == owner.id,
                                                                 Workflow.label == label)).first()
        if taken is not None:
            raise StateError(f"label {label!r} is already used by workflow {taken} of user {owner.name}")
    _check_lengths(name=spec.name, label=label, request_id=request_id, experiment_id=experiment_id,
                   publish_metadata_to=publish_metadata_to or spec.publish_metadata_to)
    _check_top_level(spec.nodes)
    level = _level(event_level if event_level is not None else spec.event_level)
    # the writer passes its batch's time, so this event's time is in step with the others of its commit
    now = now or utcnow()

    workflow = Workflow(
        global_id=global_id or new_workflow_global_id(), owner_id=owner.id, label=label, request_id=request_id,
        name=spec.name, experiment_id=experiment_id, descriptor=descriptor,
        descriptor_sha256=hashlib.sha256(descriptor.encode("utf-8")).hexdigest(),
        plan=plan if plan is not None else to_json(spec),
        event_level=int(level), priority=spec.priority if priority is None else priority,
        publish_metadata_to=publish_metadata_to if publish_metadata_to is not None else spec.publish_metadata_to,
        max_in_flight=max_in_flight if max_in_flight is not None else spec.max_in_flight,
        state=WorkflowState.ACCEPTED.value, cancel_requested=False, event_seq=0, submitted_at=now,
        work_root=work_root, origin_name=origin[0] if origin else None,
        origin_version=origin[1] if origin else None,
        arguments=[list(pair) for pair in spec.arguments] if spec.arguments else None,
    )
    session.add(workflow)
    session.flush()

    ids = _insert_nodes(session, workflow.id, spec.nodes, now)
    edges = [(ids[parent], ids[node.id]) for node in spec.nodes for parent in dict.fromkeys(node.depends)]
    _insert_edges(session, edges)

    add_event(session, workflow, type=EventType.WORKFLOW_SUBMITTED, actor=actor, time=now, publishing=publishing,
              message=f"workflow {spec.name!r} submitted with {len(spec.nodes)} top-level nodes",
              properties={"name": spec.name, "label": label, "nodes": len(spec.nodes), "edges": len(edges)})
    return workflow


def _check_lengths(**values: str | None) -> None:
    """Refuse a string longer than its column, before writing (PostgreSQL would abort the transaction)."""
    for column, value in values.items():
        limit = WORKFLOWS.c[column].type.length
        if value is not None and len(value) > limit:
            raise LimitExceeded(f"workflow {column.replace('_', ' ')} is {len(value)} characters long; "
                                f"at most {limit} are allowed")


def _check_top_level(nodes: tuple[AnyNode, ...]) -> None:
    """Refuse what the validator should already have refused: the database cannot store it."""
    seen: set[str] = set()
    problems = []
    for node in nodes:
        if node.id in seen:
            problems.append(Problem("<description>", node.line, 0, f"node id {node.id!r} is used twice"))
        seen.add(node.id)
    for node in nodes:
        for parent in node.depends:
            if parent not in seen:
                problems.append(Problem("<description>", node.line, 0,
                                        f"node {node.id!r} depends on {parent!r}, which is not a top-level node"))
    if problems:
        raise DescriptionError(problems)


def _insert_nodes(session: Session, workflow_id: int, nodes: tuple[AnyNode, ...],
                  now: dt.datetime) -> dict[str, int]:
    """Insert the top-level nodes in bulk; returns node id (= path) -> database id.

    The rows come back in no promised order, so RETURNING carries the path with the id (asking SQLAlchemy
    for parameter order makes it fall back to slower statements on some databases).
    """
    if not nodes:
        return {}
    columns = {
        "path": [node.id for node in nodes],
        "kind": [node.kind for node in nodes],
        # every node starts waiting; the engine makes the ones without parents ready, with an event each
        "state": [NodeState.WAITING.value for node in nodes],
        "priority": [node.priority for node in nodes],
    }
    if _dialect(session) == "postgresql":
        # one statement over arrays: psycopg parses every multi-row VALUES statement in Python, which made
        # 100,000 rows take 10 s; unnest() takes a fraction of a second
        rows = _unnest(columns, {"path": Text, "kind": Text, "state": Text, "priority": Integer})
        source = select(literal(workflow_id, Integer), rows.c.path, rows.c.path, rows.c.kind, rows.c.state,
                        rows.c.priority, literal(0, Integer), literal(now, UTCDateTime()))
        statement = insert(NODES).from_select(
            ["workflow_id", "path", "template", "kind", "state", "priority", "attempt", "created_at"], source)
        result = session.execute(statement.returning(NODES.c.id, NODES.c.path))
    else:
        params = [{"workflow_id": workflow_id, "path": path, "template": path, "kind": kind, "state": state,
                   "priority": priority, "attempt": 0, "created_at": now}
                  for path, kind, state, priority in zip(*columns.values())]
        statement = (insert(NODES).returning(NODES.c.id, NODES.c.path)
                     .execution_options(insertmanyvalues_page_size=BULK_ROWS))
        result = session.execute(statement, params)
    return {path: node_id for node_id, path in result}


def _insert_edges(session: Session, edges: list[tuple[int, int]]) -> None:
    """Insert dependency rows (parent id, child id) in bulk."""
    if not edges:
        return
    if _dialect(session) == "postgresql":
        parents, children = (list(column) for column in zip(*edges))
        rows = _unnest({"parent_id": parents, "child_id": children}, {"parent_id": BigInteger,
                                                                      "child_id": BigInteger})
        session.execute(insert(DEPENDENCIES).from_select(["parent_id", "child_id"],
                                                         select(rows.c.parent_id, rows.c.child_id)))
    else:
        session.execute(insert(DEPENDENCIES), [{"parent_id": p, "child_id": c} for p, c in edges])


def _unnest(columns: dict[str, list[Any]], types: dict[str, Any]) -> Any:
    """PostgreSQL ``unnest(array, array, ...) AS t(name, name, ...)``: one array parameter per column."""
    # imported here: the PostgreSQL dialect package pulls in asyncpg's and asyncio (30 ms of every SQLite
    # `broker run`'s start-up, for a type only PostgreSQL uses)
    from sqlalchemy.dialects.postgresql import ARRAY

    arrays = [bindparam(f"{name}_array", values, type_=ARRAY(types[name])) for name, values in columns.items()]
    return func.unnest(*arrays).table_valued(*columns).render_derived()


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _level(value: EventLevel | str | int) -> EventLevel:
    if isinstance(value, str):
        try:
            return EventLevel.parse(value)
        except KeyError:
            raise ConfigError(f"invalid event level {value!r}: expected one of "
                              f"{', '.join(level.name for level in EventLevel)}") from None
    return EventLevel(value)


# ----------------------------------------------------------------------------------------------- events

def add_event(session: Session, workflow: Workflow | None, *, type: EventType | str, actor: str,
              node_path: str | None = None, state: str | None = None, message: str | None = None,
              properties: dict[str, Any] | None = None, time: dt.datetime | None = None,
              publishing: bool = True) -> int:
    """Record an event (next per-workflow seq) with the outbox rows of every destination; returns its id.

    ``workflow`` None records a service-level event. The event is always kept; it is queued for publishing
    when its level is within the workflow's event level, and a metadata event also goes to the workflow's
    ``publish_metadata_to`` destination whatever that level. ``publishing`` False (no bus configured):
    no outbox rows at all, the event is never published.
    """
    event_type = EventType(type)
    level = level_of(event_type, state)
    seq = None
    if workflow is not None:
        workflow.event_seq += 1
        seq = workflow.event_seq
    event_id = session.execute(insert(EVENTS).returning(EVENTS.c.id), {
        "workflow_id": None if workflow is None else workflow.id, "seq": seq, "node_path": node_path,
        "actor": actor, "level": int(level), "type": event_type.value, "state": state, "message": message,
        "time": time or utcnow(), "properties": properties,
    }).scalar_one()
    if not publishing:
        targets = []
    elif workflow is None:
        targets = destinations(owner=None, workflow_level=None, metadata_to=None, event_type=event_type,
                               level=level)
    else:
        owner = session.get(User, workflow.owner_id)
        assert owner is not None, f"workflow {workflow.global_id} has no owner row"
        targets = destinations(owner=owner.name, workflow_level=workflow.event_level,
                               metadata_to=workflow.publish_metadata_to, event_type=event_type, level=level)
    if targets:
        session.execute(insert(OUTBOX), [{"event_id": event_id, "destination": d} for d in targets])
    return event_id


def events_after(session: Session, last_id: int, *, limit: int, workflow_id: int | None = None,
                 owner_id: int | None = None) -> list[Event]:
    """At most ``limit`` events with an id above ``last_id``, oldest first, optionally of one workflow/owner."""
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    query = select(Event).where(Event.id > last_id)
    if workflow_id is not None:
        query = query.where(Event.workflow_id == workflow_id)
    if owner_id is not None:
        query = query.join(Workflow, Workflow.id == Event.workflow_id).where(Workflow.owner_id == owner_id)
    return list(session.scalars(query.order_by(Event.id).limit(limit)))


# ------------------------------------------------------------------------------------------------ reads

def get_workflow(session: Session, key: int | str) -> Workflow:
    """A workflow by database id (int or digits) or global id. Raises NotFound."""
    workflow = None
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        workflow = session.get(Workflow, int(key))
    elif isinstance(key, str) and GLOBAL_ID_RE.fullmatch(key):
        workflow = session.scalars(select(Workflow).where(Workflow.global_id == key)).one_or_none()
    if workflow is None:
        raise NotFound(f"no workflow {key!r}")
    return workflow


def list_nodes(session: Session, workflow_id: int) -> list[Node]:
    """Every stored node of a workflow, in insertion order."""
    return list(session.scalars(select(Node).where(Node.workflow_id == workflow_id).order_by(Node.id)))

