"""Queries of the SOAP API: visibility-scoped reads, summaries, event pages and workflow deletion.

Callers own the transaction. ``owner_id`` arguments scope a read to one user's workflows (None: every
user's, for admins); something outside the scope is reported as not found, so a user cannot even learn
that another user's workflow exists.

Deletion removes the workflow row; its nodes, edges, events, outbox rows and elf sessions go with it
through ``ON DELETE CASCADE``. Only finished workflows are deleted: :func:`deletion_candidates` splits a
selection into what may go and what is still running or, when a bus is configured, still has events to
publish (its outbox has not drained: consumers must still receive its final events); :func:`_blocker` is
the one place these conditions live, and :func:`delete_finished` checks them again inside the DELETE.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, bindparam, delete, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from broker.errors import NotFound
from broker.ids import split_global_id
from broker.persistence.models import Event, Node, Outbox, User, Workflow
from broker.states import IN_FLIGHT, TERMINAL, WORKFLOW_TERMINAL

if TYPE_CHECKING:
    from broker.persistence.progress import ProgressBoard

#: workflow states that count as completed (any terminal state)
COMPLETED = tuple(state.value for state in WORKFLOW_TERMINAL)
#: node states holding a slot (jobs in flight)
IN_FLIGHT_STATES = tuple(state.value for state in IN_FLIGHT)
#: node states that are done, for progress figures
DONE_STATES = tuple(state.value for state in TERMINAL)
#: most workflow ids one DELETE names (SQLite allows 32,766 parameters per statement)
DELETE_CHUNK = 500


def counted() -> Any:
    """SQL condition of the work-carrying nodes (execute nodes, unexpanded sweeps), as the engine counts: an
    expanded sweep and a node that spawned (``members`` set) are groups, as members are."""
    return and_(Node.kind != "member", Node.members.is_(None))


# ------------------------------------------------------------------------------------------- lookups

def user_by_name(s: Session, name: str) -> User:
    """The user called ``name``. Raises NotFound."""
    user = s.execute(select(User).where(User.name == name)).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user {name!r}")
    return user


def visible_workflow(s: Session, workflow_id: int, owner_id: int | None) -> Workflow:
    """A workflow by database id, if the scope allows. Raises NotFound."""
    workflow = s.get(Workflow, workflow_id)
    if workflow is None or (owner_id is not None and workflow.owner_id != owner_id):
        raise NotFound(f"no workflow with id {workflow_id}")
    return workflow


def visible_node(s: Session, node_id: int, owner_id: int | None) -> tuple[Node, Workflow]:
    """A node by database id and its workflow, if the scope allows. Raises NotFound."""
    node = s.get(Node, node_id)
    workflow = None if node is None else s.get(Workflow, node.workflow_id)
    if node is None or workflow is None or (owner_id is not None and workflow.owner_id != owner_id):
        raise NotFound(f"no node with id {node_id}")
    return node, workflow


def workflow_nodes(s: Session, workflow_id: int) -> list[Node]:
    """Every node of a workflow, in creation order."""
    return list(s.scalars(select(Node).where(Node.workflow_id == workflow_id).order_by(Node.id)))


def node_subtree(s: Session, node: Node) -> list[Node]:
    """A node and every node inside it (a sweep's members and their bodies), in creation order."""
    prefix = node.path
    return list(s.scalars(select(Node).where(
        Node.workflow_id == node.workflow_id,
        (Node.id == node.id) | Node.path.startswith(prefix + "/", autoescape=True)
        | Node.path.startswith(prefix + "[", autoescape=True)).order_by(Node.id)))


# -------------------------------------------------------------------------------------------- status

@dataclass(frozen=True, slots=True)
class Status:
    """The current status of a workflow or a node, with the newest event about it."""

    global_id: str
    workflow_id: int
    workflow_global_id: str
    node_path: str | None
    state: str
    #: the newest event about the target (0: none yet) and its time
    last_event_id: int
    time: dt.datetime | None
    message: str | None
    #: percent: a node's last reported progress; a workflow's share of work-carrying nodes done
    progress: float | None


def _status_statements() -> tuple[Any, Any, Any]:
    """The statements of :func:`current_status`, built once: this is the API's hottest read."""
    wf = Workflow.__table__
    nodes = Node.__table__
    events = Event.__table__
    counted_nodes = and_(nodes.c.workflow_id == wf.c.id,
                         nodes.c.kind != "member", nodes.c.members.is_(None))
    last = select(events.c.id, events.c.time).where(events.c.workflow_id == wf.c.id) \
        .order_by(events.c.id.desc()).limit(1)
    columns = (wf.c.id, wf.c.owner_id, wf.c.state, wf.c.submitted_at,
               last.with_only_columns(events.c.id).scalar_subquery().label("last_id"),
               last.with_only_columns(events.c.time).scalar_subquery().label("last_time"))
    # without the node counts (two scans of the workflow's nodes): when a ProgressBoard has them
    light = select(*columns).where(wf.c.global_id == bindparam("gid"))
    # the counts the writer committed with the nodes (revision 0011); only a workflow no broker of that
    # revision has written yet is counted (COALESCE evaluates its second argument only when the first is null)
    workflow = select(
        *columns,
        func.coalesce(wf.c.nodes_total, select(func.count()).select_from(nodes).where(counted_nodes)
                      .scalar_subquery()).label("total"),
        func.coalesce(wf.c.nodes_done, select(func.count()).select_from(nodes)
                      .where(counted_nodes, nodes.c.state.in_(DONE_STATES)).scalar_subquery()).label("done"),
    ).where(wf.c.global_id == bindparam("gid"))
    node_last = select(events.c.id, events.c.time).where(events.c.workflow_id == nodes.c.workflow_id,
                                                         events.c.node_path == nodes.c.path) \
        .order_by(events.c.id.desc()).limit(1)
    node = select(
        wf.c.id.label("workflow_id"), wf.c.owner_id, nodes.c.state, nodes.c.message, nodes.c.progress,
        nodes.c.created_at, node_last.with_only_columns(events.c.id).scalar_subquery().label("last_id"),
        node_last.with_only_columns(events.c.time).scalar_subquery().label("last_time"),
    ).join(nodes, nodes.c.workflow_id == wf.c.id).where(wf.c.global_id == bindparam("gid"),
                                                         nodes.c.path == bindparam("path"))
    return workflow, light, node


_STATUS_WORKFLOW, _STATUS_WORKFLOW_LIGHT, _STATUS_NODE = _status_statements()


def current_status(s: Session | Connection, global_id: str, owner_id: int | None,
                   board: ProgressBoard | None = None) -> Status:
    """The status of a workflow or node global id, if the scope allows (one statement). Raises NotFound.

    ``board``: the running broker's committed node counts; a workflow's progress comes from there when it
    has them (see :mod:`broker.persistence.progress`), else from the counts the writer committed in the
    workflow's row (any process can read those), else from counting its nodes.
    """
    try:
        wf_gid, path = split_global_id(global_id)
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    if not path:
        known = board.get(wf_gid) if board is not None else None
        row = s.execute(_STATUS_WORKFLOW if known is None else _STATUS_WORKFLOW_LIGHT, {"gid": wf_gid}).first()
        if row is None or (owner_id is not None and row.owner_id != owner_id):
            raise NotFound(f"no workflow {wf_gid}")
        if known is None:
            total, done = row.total, row.done
            if board is not None and row.state in COMPLETED:  # a running one's counts come from the writer
                board.remember(wf_gid, total, done)
        else:
            total, done = known
        progress = 100.0 * done / total if total else None
        return Status(wf_gid, row.id, wf_gid, None, row.state, row.last_id or 0,
                      _utc(row.last_time) or row.submitted_at, None, progress)
    row = s.execute(_STATUS_NODE, {"gid": wf_gid, "path": path}).first()
    if row is None or (owner_id is not None and row.owner_id != owner_id):
        raise NotFound(f"no node {global_id}")
    return Status(global_id, row.workflow_id, wf_gid, path, row.state, row.last_id or 0,
                  _utc(row.last_time) or row.created_at, row.message, row.progress)


def _utc(value: Any) -> dt.datetime | None:
    """A time read through a scalar subquery (no column type to convert it): aware UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


# -------------------------------------------------------------------------------------------- events

def events_page(s: Session, last_id: int, limit: int, owner_id: int | None = None,
                every_event: bool = False, workflow_id: int | None = None) -> list[tuple[Event, str | None]]:
    """At most ``limit`` events after ``last_id``, oldest first, each with its workflow's global id.

    ``owner_id`` limits them to that user's workflows, ``workflow_id`` to one workflow; ``every_event``
    (admins) also includes service-level events, which belong to no workflow.
    """
    query = _page(select(Event, Workflow.global_id), last_id, limit, owner_id, every_event)
    if workflow_id is not None:
        query = query.where(Event.workflow_id == workflow_id)  # ix_events_workflow_id: (workflow_id, id)
    return [(event, gid) for event, gid in s.execute(query)]


#: the columns of an event page read without the ORM (:func:`event_rows`), in this order
EVENT_COLUMNS = (Event.id, Event.time, Event.type, Event.level, Event.state, Event.workflow_id, Event.node_path,
                 Event.actor, Event.message, Event.properties)


def event_rows(connection: Connection, last_id: int, limit: int, owner_id: int | None = None,
               every_event: bool = False) -> Sequence[Any]:
    """The page :func:`events_page` reads, as plain rows (:data:`EVENT_COLUMNS` and the workflow's global
    id): building 200 ORM objects was a third of a page's time, and the API's fast path needs only values."""
    query = _page(select(*EVENT_COLUMNS, Workflow.global_id), last_id, limit, owner_id, every_event)
    return connection.execute(query).all()


def _page(query: Select[Any], last_id: int, limit: int, owner_id: int | None, every_event: bool) -> Select[Any]:
    query = query.outerjoin(Workflow, Workflow.id == Event.workflow_id).where(Event.id > last_id)
    if owner_id is not None:
        query = query.where(Workflow.owner_id == owner_id)
    elif not every_event:
        query = query.where(Event.workflow_id.is_not(None))
    return query.order_by(Event.id).limit(limit)


# ------------------------------------------------------------------------------------------ summaries

def state_counts(s: Session, owner_id: int | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """(workflows by state, work-carrying nodes by state), of one user or of everyone."""
    wf_query = select(Workflow.state, func.count()).group_by(Workflow.state)
    node_query = select(Node.state, func.count()).where(counted()).group_by(Node.state)
    if owner_id is not None:
        wf_query = wf_query.where(Workflow.owner_id == owner_id)
        node_query = node_query.join(Workflow, Workflow.id == Node.workflow_id).where(Workflow.owner_id == owner_id)
    return dict(s.execute(wf_query).all()), dict(s.execute(node_query).all())


def hosts_in_flight(s: Session) -> dict[str, int]:
    """Host -> nodes in flight there (a node not yet placed counts under "")."""
    rows = s.execute(select(Node.host, func.count()).where(Node.state.in_(IN_FLIGHT_STATES), counted())
                     .group_by(Node.host)).all()
    return {host or "": count for host, count in rows}


def outbox_backlog(s: Session) -> int:
    """Outbox rows not yet published."""
    return s.execute(select(func.count()).select_from(Outbox).where(Outbox.sent_at.is_(None))).scalar_one()


@dataclass(frozen=True, slots=True)
class UserInfo:
    """One user and their workflows by state."""

    name: str
    role: str
    workflows: dict[str, int]
    last_submitted: dt.datetime | None


def users_info(s: Session) -> list[UserInfo]:
    """Every user with their workflows by state, by name."""
    counts: dict[int, dict[str, int]] = {}
    for owner_id, state, count in s.execute(select(Workflow.owner_id, Workflow.state, func.count())
                                            .group_by(Workflow.owner_id, Workflow.state)):
        counts.setdefault(owner_id, {})[state] = count
    last = dict(s.execute(select(Workflow.owner_id, func.max(Workflow.submitted_at)).group_by(Workflow.owner_id)).all())
    users = s.execute(select(User.id, User.name, User.role).order_by(User.name)).all()
    return [UserInfo(u.name, u.role, counts.get(u.id, {}), last.get(u.id)) for u in users]


# ------------------------------------------------------------------------------------------- deletion

@dataclass(frozen=True, slots=True)
class Deletion:
    """What a delete removed and what it left (global ids); ``reasons`` says why each skipped one was left."""

    deleted: tuple[str, ...]
    skipped: tuple[str, ...]
    reasons: tuple[str, ...] = ()


def _unsent_of(workflow_id: Any) -> Any:
    """SELECT of the unsent outbox rows of one workflow's events (``workflow_id``: a column or a value)."""
    return select(Outbox.id).join(Event, Event.id == Outbox.event_id) \
        .where(Event.workflow_id == workflow_id, Outbox.sent_at.is_(None))


def undrained(s: Session) -> set[int]:
    """Ids of the workflows some of whose events are not published yet (unsent outbox rows)."""
    # from the outbox side: the partial index ix_outbox_unsent keeps this small however long the history
    query = select(Event.workflow_id).join(Outbox, Outbox.event_id == Event.id) \
        .where(Outbox.sent_at.is_(None), Event.workflow_id.is_not(None)).distinct()
    return set(s.execute(query).scalars())


def _blocker(row: Any, undrained_ids: set[int] | frozenset[int] = frozenset()) -> str | None:
    """Why a workflow cannot be deleted now, or None. The one place deletion conditions live.

    A workflow goes only once finished, and (when ``undrained_ids`` is given: a bus is configured) only once
    its outbox has drained, so that consumers still receive its final events.
    """
    if row.state not in COMPLETED:
        return f"workflow {row.global_id} is still {row.state}"
    if row.id in undrained_ids:
        return f"workflow {row.global_id} has events not yet published on the bus (its outbox has not drained)"
    return None


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    """A workflow selected for deletion or archiving, with why it is left out (None: it is not)."""

    id: int
    global_id: str
    state: str
    finished_at: dt.datetime | None
    name: str
    #: the owner's user name
    owner: str
    reason: str | None = None


def workflow_rows() -> Select[Any]:
    """The query of every workflow's :class:`WorkflowRow` columns (reason excepted), in id order."""
    return select(Workflow.id, Workflow.global_id, Workflow.state, Workflow.finished_at, Workflow.name,
                  User.name.label("owner")).join(User, User.id == Workflow.owner_id).order_by(Workflow.id)


def deletion_candidates(s: Session, *, owner_id: int | None = None, finished_before: dt.datetime | None = None,
                        completed_only: bool = False, workflow_ids: Sequence[int] | None = None,
                        require_drained: bool = False) -> tuple[list[WorkflowRow], list[WorkflowRow]]:
    """(deletable rows, rows skipped: still running, or with unpublished events) of a selection of workflows.

    ``finished_before`` selects workflows that finished before that time, and the running workflows that
    had finished before it and were restarted since (those are skipped and reported); ``completed_only``
    selects finished workflows only; ``workflow_ids`` limits the selection to those workflows;
    ``require_drained`` skips workflows whose outbox has not drained.
    """
    query = workflow_rows()
    if owner_id is not None:
        query = query.where(Workflow.owner_id == owner_id)
    if completed_only:
        query = query.where(Workflow.state.in_(COMPLETED))
    if workflow_ids is not None:
        wanted = set(workflow_ids)
        rows = [r for start in range(0, len(wanted), DELETE_CHUNK)
                for r in s.execute(query.where(Workflow.id.in_(sorted(wanted)[start:start + DELETE_CHUNK])))]
    else:
        rows = list(s.execute(query))
    if finished_before is not None:
        rows = [r for r in rows if r.finished_at is not None and r.finished_at < finished_before]
    pending = undrained(s) if require_drained else set()
    ok, skipped = [], []
    for row in rows:
        reason = _blocker(row, pending)
        (skipped if reason else ok).append(WorkflowRow(*row, reason=reason))
    return ok, skipped


def check_deletable(s: Session, workflow: Workflow, require_drained: bool = False) -> str | None:
    """Why this one workflow cannot be deleted now, or None."""
    pending: set[int] = set()
    if require_drained and s.execute(_unsent_of(workflow.id).limit(1)).first() is not None:
        pending = {workflow.id}
    return _blocker(workflow, pending)


def delete_finished(s: Session, workflow_ids: Sequence[int], *, require_drained: bool = False,
                    last_event_id: int | None = None) -> list[int]:
    """Delete workflows that are still deletable at this moment; returns the ids actually deleted.

    Everything of theirs goes with them through the foreign keys. The conditions are checked again inside
    the DELETE: a restart may have reopened a workflow since it was selected, or an event been added.
    ``last_event_id`` (for one workflow that was just archived) refuses it if it has a newer event.
    """
    conditions = [Workflow.state.in_(COMPLETED)]
    if require_drained:
        conditions.append(~_unsent_of(Workflow.id).exists())
    if last_event_id is not None:
        conditions.append(~select(Event.id).where(Event.workflow_id == Workflow.id, Event.id > last_event_id)
                          .exists())
    deleted: list[int] = []
    ids = list(workflow_ids)
    for start in range(0, len(ids), DELETE_CHUNK):
        chunk = ids[start:start + DELETE_CHUNK]
        result = s.execute(delete(Workflow).where(Workflow.id.in_(chunk), *conditions).returning(Workflow.id)
                           .execution_options(synchronize_session=False))
        deleted.extend(result.scalars())
    return deleted


def delete_workflows(s: Session, workflow_ids: Sequence[int], *, require_drained: bool = False) -> int:
    """Delete workflows still deletable at this moment (see :func:`delete_finished`); returns the count."""
    return len(delete_finished(s, workflow_ids, require_drained=require_drained))
