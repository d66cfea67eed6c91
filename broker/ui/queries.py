"""What the dashboard's pages read. Every read is scoped: ``owner_id`` None is an admin's (everything), else
the user's own workflows only; anything outside the scope is NotFound, like a workflow that does not exist.

The workflows list pages by key (the sort column and the id of the last row shown), so the 200th page costs
what the first does; the graph reads only top-level nodes (at most :data:`MAX_BOXES`) and counts a sweep's
members by state in one grouped read, so a 100,000-member sweep is one box.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select, tuple_
from sqlalchemy.orm import Session, defer

from broker.errors import NotFound
from broker.persistence.models import Dependency, Event, Node, User, Workflow
from broker.persistence.queries import DONE_STATES, counted

#: most boxes a workflow's graph draws; the other top-level nodes are counted, not drawn
MAX_BOXES = 2000
#: the columns the workflows list sorts by
SORTS = {"submitted": Workflow.submitted_at, "name": Workflow.name, "state": Workflow.state, "id": Workflow.id}


@dataclass(frozen=True, slots=True)
class Filters:
    """The workflows list's filters (None: not filtered)."""

    state: str | None = None
    name: str | None = None
    owner: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the workflows list."""

    rows: list[Any]
    #: workflow id -> (work-carrying nodes, ended ones)
    progress: dict[int, tuple[int, int]]
    #: the cursor of the next page (None: this is the last)
    next_cursor: str | None


def workflows_page(s: Session, owner_id: int | None, filters: Filters, sort: str, descending: bool,
                   cursor: str | None, limit: int, board: Any = None) -> Page:
    """A page of workflows after ``cursor`` (``"<value>|<id>"`` of the last row shown). Raises ValueError for a
    cursor that is not one of this sort's."""
    column = SORTS[sort]
    query = select(Workflow.id, Workflow.global_id, Workflow.name, Workflow.state, Workflow.priority,
                   Workflow.submitted_at, Workflow.finished_at, User.name.label("owner")) \
        .join(User, User.id == Workflow.owner_id)
    if owner_id is not None:
        query = query.where(Workflow.owner_id == owner_id)
    if filters.state:
        query = query.where(Workflow.state == filters.state)
    if filters.name:
        query = query.where(Workflow.name.contains(filters.name, autoescape=True))
    if filters.owner:
        query = query.where(User.name == filters.owner)
    if filters.since is not None:
        query = query.where(Workflow.submitted_at >= filters.since)
    if filters.until is not None:
        query = query.where(Workflow.submitted_at < filters.until)
    if cursor:
        value, last_id = _cursor_value(sort, cursor)
        key = tuple_(column, Workflow.id)
        query = query.where(key < (value, last_id) if descending else key > (value, last_id))
    order = (column.desc(), Workflow.id.desc()) if descending else (column.asc(), Workflow.id.asc())
    rows = list(s.execute(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        value = getattr(last, {"submitted": "submitted_at"}.get(sort, sort))
        next_cursor = f"{value.isoformat() if isinstance(value, dt.datetime) else value}|{last.id}"
    return Page(rows, progress_of(s, [(r.id, r.global_id) for r in rows], board), next_cursor)


def _cursor_value(sort: str, cursor: str) -> tuple[Any, int]:
    value, sep, last_id = cursor.rpartition("|")
    if not sep or not last_id.isdigit():
        raise ValueError("invalid page cursor")
    if sort == "submitted":
        parsed = dt.datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)), int(last_id)
    if sort == "id":
        return int(value), int(last_id)
    return value, int(last_id)


def progress_of(s: Session, workflows: list[tuple[int, str]], board: Any = None) -> dict[int, tuple[int, int]]:
    """Workflow id -> (work-carrying nodes, ended ones): from the engine's board, else one grouped count."""
    found: dict[int, tuple[int, int]] = {}
    missing = []
    for workflow_id, global_id in workflows:
        known = board.get(global_id) if board is not None else None
        if known is None:
            missing.append(workflow_id)
        else:
            found[workflow_id] = known
    if missing:
        done = func.sum(case((Node.state.in_(DONE_STATES), 1), else_=0))
        for workflow_id, total, ended in s.execute(
                select(Node.workflow_id, func.count(), done).where(Node.workflow_id.in_(missing), counted())
                .group_by(Node.workflow_id)):
            found[workflow_id] = (total, int(ended or 0))
    return found


def list_states(s: Session, owner_id: int | None, global_ids: list[str], board: Any = None) -> dict[str, Any]:
    """Global id -> (state, ended nodes, nodes) of the listed workflows the scope allows (the list's feed)."""
    query = select(Workflow.id, Workflow.global_id, Workflow.state).where(Workflow.global_id.in_(global_ids))
    if owner_id is not None:
        query = query.where(Workflow.owner_id == owner_id)
    rows = list(s.execute(query))
    progress = progress_of(s, [(r.id, r.global_id) for r in rows], board)
    return {r.global_id: (r.state, *reversed(progress.get(r.id, (0, 0)))) for r in rows}


def workflow_counts(s: Session, owner_id: int | None) -> dict[str, int]:
    """Workflows by state (of one user, or everyone's)."""
    query = select(Workflow.state, func.count()).group_by(Workflow.state)
    if owner_id is not None:
        query = query.where(Workflow.owner_id == owner_id)
    return dict(s.execute(query).all())


# ------------------------------------------------------------------------------------------ a workflow

def workflow(s: Session, global_id: str, owner_id: int | None) -> tuple[Workflow, str]:
    """(workflow, owner name) by global id. Raises NotFound."""
    # the description and the plan (megabytes, perhaps) only when asked for: the download reads them
    row = s.execute(select(Workflow, User.name).join(User, User.id == Workflow.owner_id)
                    .options(defer(Workflow.descriptor), defer(Workflow.plan))
                    .where(Workflow.global_id == global_id)).first()
    if row is None or (owner_id is not None and row[0].owner_id != owner_id):
        raise NotFound(f"no workflow {global_id}")
    return row[0], row[1]


def node_counts(s: Session, workflow_id: int) -> dict[str, int]:
    """Work-carrying nodes by state."""
    return dict(s.execute(select(Node.state, func.count()).where(Node.workflow_id == workflow_id, counted())
                          .group_by(Node.state)).all())


def last_event_id(s: Session, workflow_id: int) -> int:
    """The newest event of a workflow (0: none): one read of the (workflow_id, id) index."""
    return s.execute(select(func.max(Event.id)).where(Event.workflow_id == workflow_id)).scalar() or 0


def top_nodes(s: Session, workflow_id: int) -> tuple[list[Any], int]:
    """(the first MAX_BOXES top-level nodes in creation order, how many there are in all)."""
    rows = list(s.execute(select(Node.id, Node.path, Node.kind, Node.state, Node.members, Node.progress)
                          .where(Node.workflow_id == workflow_id, Node.parent_id.is_(None))
                          .order_by(Node.id).limit(MAX_BOXES)))
    total = len(rows)
    if total == MAX_BOXES:
        total = s.execute(select(func.count()).select_from(Node).where(
            Node.workflow_id == workflow_id, Node.parent_id.is_(None))).scalar_one()
    return rows, total


def top_edges(s: Session, workflow_id: int) -> list[tuple[int, int]]:
    """(parent id, child id) of the dependencies between top-level nodes."""
    child = Node.__table__.alias("child")
    return [(p, c) for p, c in s.execute(
        select(Dependency.parent_id, Dependency.child_id).join(child, child.c.id == Dependency.child_id)
        .where(child.c.workflow_id == workflow_id, child.c.parent_id.is_(None)))]


def sweep_members(s: Session, workflow_id: int) -> dict[str, dict[str, int]]:
    """Top-level sweep path -> its members by state (one grouped read however many members)."""
    found: dict[str, dict[str, int]] = {}
    for template, state, count in s.execute(
            select(Node.template, Node.state, func.count())
            .where(Node.workflow_id == workflow_id, Node.kind == "member")
            .group_by(Node.template, Node.state)):
        if "/" not in template:
            found.setdefault(template, {})[state] = count
    return found


# --------------------------------------------------------------------------------------------- a node

def node(s: Session, node_id: int, owner_id: int | None) -> tuple[Node, Workflow]:
    """A node and its workflow by database id. Raises NotFound."""
    found = s.get(Node, node_id)
    wf = None if found is None else s.get(Workflow, found.workflow_id,
                                          options=[defer(Workflow.descriptor), defer(Workflow.plan)])
    if found is None or wf is None or (owner_id is not None and wf.owner_id != owner_id):
        raise NotFound(f"no node {node_id}")
    return found, wf


def user_name(s: Session, user_id: int) -> str:
    """A user's name by id."""
    return s.execute(select(User.name).where(User.id == user_id)).scalar_one()


def node_state(s: Session, node_id: int, owner_id: int | None) -> Any:
    """(state, progress, message) of a node, for its page's feed. Raises NotFound."""
    row = s.execute(select(Node.state, Node.progress, Node.message, Workflow.owner_id)
                    .join(Workflow, Workflow.id == Node.workflow_id).where(Node.id == node_id)).first()
    if row is None or (owner_id is not None and row.owner_id != owner_id):
        raise NotFound(f"no node {node_id}")
    return row


def children(s: Session, node_id: int, after: int, limit: int) -> list[Any]:
    """A group's children (a sweep's members, a member's body nodes) after id ``after``, by id."""
    return list(s.execute(select(Node.id, Node.path, Node.kind, Node.state, Node.progress)
                          .where(Node.parent_id == node_id, Node.id > after).order_by(Node.id).limit(limit)))


def events(s: Session, workflow_id: int, after: int, level: int, limit: int, path: str | None = None,
           newest: bool = False) -> list[Any]:
    """Events of a workflow (of one node when ``path``) at ``level`` or more important, after id ``after``,
    oldest first; ``newest``: the last ``limit`` of them instead of the first."""
    query = select(Event.id, Event.time, Event.level, Event.type, Event.node_path, Event.state, Event.actor,
                   Event.message).where(Event.workflow_id == workflow_id, Event.id > after, Event.level <= level)
    if path is not None:
        query = query.where(Event.node_path == path)
    if newest:
        return list(reversed(list(s.execute(query.order_by(Event.id.desc()).limit(limit)))))
    return list(s.execute(query.order_by(Event.id).limit(limit)))


def parents_of(s: Session, node_id: int) -> list[Any]:
    """The nodes a node waits for."""
    return list(s.execute(select(Node.id, Node.path, Node.state).join(Dependency, Dependency.parent_id == Node.id)
                          .where(Dependency.child_id == node_id).order_by(Node.id)))


__all__ = ["Filters", "MAX_BOXES", "Page", "SORTS"]
