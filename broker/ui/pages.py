"""The read pages of the dashboard and their live feeds: each takes the dashboard and the request and
answers (template, values) for a page or a JSON-ready dict for a feed. Raises NotFound for what the user
may not see (another user's workflow is "not found", exactly like one that does not exist).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Any

from broker.api.identity import scope_of
from broker.events.types import EventLevel
from broker.ids import node_global_id
from broker.persistence.attempts import attempts_of as stored_attempts
from broker.persistence.estimates import estimate_node, estimate_workflow
from broker.states import NodeState, WorkflowState
from broker.ui import graph, queries

#: rows of the workflows list per page
PAGE_ROWS = 50
#: events a page shows at first, and most a feed answers at once
EVENT_ROWS = 200
#: members of a sweep listed per page on its node page
CHILD_ROWS = 200
#: bytes read from the end of a node's stdout or stderr, and most lines of it shown
TAIL_BYTES, TAIL_LINES = 64 * 1024, 100
LEVELS = [(level.value, level.name) for level in EventLevel]
LEVEL_NAMES = {level.value: level.name for level in EventLevel}


def workflows(ui: Any, req: Any) -> tuple[str, dict[str, Any]]:
    """The workflows list: filters, sorting, keyset paging, counts by state, progress."""
    user = req.user
    q = req.query
    sort = q.get("sort") if q.get("sort") in queries.SORTS else "submitted"
    descending = q.get("dir", "desc") != "asc"
    error = None
    try:
        filters = queries.Filters(
            state=q.get("state") if q.get("state") in set(WorkflowState) else None,
            name=(q.get("name") or "")[:200] or None, owner=((q.get("owner") or "")[:32] or None) if user.admin else None,
            since=_day(q.get("since")), until=_day(q.get("until"), 1))
    except ValueError:
        filters, error = queries.Filters(), "dates are YYYY-MM-DD: filters not applied"
    cursor = (q.get("after") or "")[:100] or None
    with ui.api.sessions() as s:
        try:
            page = queries.workflows_page(s, scope_of(user), filters, sort, descending, cursor, PAGE_ROWS,
                                          ui.api.progress)
        except ValueError:
            page, error = queries.workflows_page(s, scope_of(user), filters, sort, descending, None, PAGE_ROWS,
                                                 ui.api.progress), "that page no longer exists: first page shown"
            cursor = None
        by_state = queries.workflow_counts(s, scope_of(user))
        running = [w for w in page.rows if w.state in ("accepted", "running")][:MAX_ESTIMATES]
        etas = {w.id: workflow_estimate(ui, s, w.id, w.global_id) for w in running}
    keep = {k: v for k, v in q.items() if k in ("state", "name", "owner", "since", "until", "sort", "dir") and v}
    next_link = f"/ui/workflows?{urllib.parse.urlencode({**keep, 'after': page.next_cursor})}" \
        if page.next_cursor else None
    first_link = f"/ui/workflows?{urllib.parse.urlencode(keep)}" if cursor else None
    return "workflows.html", dict(page=page, by_state=by_state, filters=filters, raw=q, sort=sort,
                                  descending=descending, sorts=list(queries.SORTS), states=[s.value for s in
                                                                                           WorkflowState],
                                  next_link=next_link, first_link=first_link, error=error,
                                  etas=etas)


#: most workflows one poll of the list's feed asks about (a page shows PAGE_ROWS)
MAX_LISTED = 100


def workflows_feed(ui: Any, req: Any) -> dict[str, Any]:
    """The listed workflows' states and progress, for the list following them."""
    gids = [g for g in (req.query.get("ids") or "").split(",") if g][:MAX_LISTED]
    with ui.api.sessions() as s:
        found = queries.list_states(s, scope_of(req.user), gids, ui.api.progress)
    return {"workflows": {gid: list(value) for gid, value in found.items()}}


def _day(text: str | None, plus: int = 0) -> dt.datetime | None:
    if not text:
        return None
    day = dt.date.fromisoformat(text[:10])
    return dt.datetime.combine(day, dt.time(), dt.timezone.utc) + dt.timedelta(days=plus)


#: most running workflows of one list page given an estimated end (each reads its nodes and their history)
MAX_ESTIMATES = 20


def estimate_text(estimate: Any) -> str | None:
    """An estimate (broker.persistence.estimates.Estimate) as the pages show it; None when there is none."""
    if estimate is None:
        return None
    return (f"{estimate.p50:%Y-%m-%d %H:%M:%S} UTC (p10 {estimate.p10:%H:%M:%S}, p90 {estimate.p90:%H:%M:%S}; "
            f"from {estimate.basis} earlier attempts)")


def workflow_estimate(ui: Any, s: Any, workflow_id: int, global_id: str) -> str | None:
    """When a running workflow should end, from earlier attempts and its pace (None: ended or unknown); kept
    as the API keeps it (broker.api.estimated: a page reloaded in a loop does not estimate each time)."""
    slots = ui.api.settings.engine.max_in_flight
    estimate = ui.api.estimates.cached(global_id, lambda: estimate_workflow(s, workflow_id, slots=slots))
    return estimate_text(estimate)


@dataclass(frozen=True, slots=True)
class Drawn:
    """What the graph and its live feed share: the drawn nodes, their layout, the sweeps' member counts."""

    nodes: list[Any]
    hidden: int
    sweeps: dict[int, str]


def drawn(s: Any, workflow_id: int) -> Drawn:
    """The nodes a workflow's graph draws, how many it does not, its sweeps' member counts as text."""
    nodes, total = queries.top_nodes(s, workflow_id)
    members = queries.sweep_members(s, workflow_id)
    sweeps = {n.id: _members_text(members.get(n.path, {}), n.members) for n in nodes if n.kind == "sweep"}
    return Drawn(nodes, total - len(nodes), sweeps)


def _members_text(by_state: dict[str, int], expanded: int | None) -> str:
    if expanded is None:
        return "not expanded yet"
    order = [state.value for state in NodeState]
    parts = [f"{by_state[s]} {s}" for s in sorted(by_state, key=lambda s: order.index(s) if s in order else 99)]
    return f"{expanded} members: " + ", ".join(parts) if parts else f"{expanded} members"


def workflow(ui: Any, req: Any, global_id: str) -> tuple[str, dict[str, Any]]:
    """A workflow: attributes, counts, times and its graph."""
    with ui.api.sessions() as s:
        wf, owner = queries.workflow(s, global_id, scope_of(req.user))
        # the live feed's cursor before what the page shows: each statement here reads what is committed when
        # it runs (SQLite), so a change committed meanwhile must come after the cursor, or the feed would call
        # it old news and the page would keep the state it read before it
        last = queries.last_event_id(s, wf.id)
        s.refresh(wf, ["state", "started_at", "finished_at", "cancel_requested"])
        shown = drawn(s, wf.id)
        edges = queries.top_edges(s, wf.id)
        counts = queries.node_counts(s, wf.id)
        eta = workflow_estimate(ui, s, wf.id, wf.global_id)
    layout = graph.layout([n.id for n in shown.nodes], edges)
    total = sum(counts.values())
    done = sum(n for state, n in counts.items() if state in queries.DONE_STATES)
    return "workflow.html", dict(
        wf=wf, owner=owner, level=LEVEL_NAMES.get(wf.event_level, wf.event_level), nodes=shown.nodes,
        hidden=shown.hidden, drawn=len(shown.nodes), sweep_text=shown.sweeps, layout=layout, box_w=graph.BOX_W,
        box_h=graph.BOX_H, node_counts=counts, total=total, done=done, last_event=last, eta=eta,
        here=f"/ui/workflows/{wf.global_id}", node_states=[state.value for state in NodeState])


def workflow_live(ui: Any, req: Any, global_id: str) -> dict[str, Any]:
    """What changed on a workflow's page since event ``after`` (see broker.ui.live)."""
    return ui.live.answer(ui.api.sessions, req.user, global_id, _int(req.query.get("after")))


def descriptor(ui: Any, req: Any, global_id: str) -> tuple[str, str]:
    """(file name, text) of a workflow's description as submitted."""
    with ui.api.sessions() as s:
        wf, _ = queries.workflow(s, global_id, scope_of(req.user))
        return f"{wf.global_id}.xml", wf.descriptor


# ----------------------------------------------------------------------------------------------- a node

@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt as the node page shows it."""

    number: int
    host: str | None
    account: str | None
    job_id: str | None
    workdir: str | None
    exit_code: int | None
    start: dt.datetime | None
    end: dt.datetime | None
    outcome: str | None
    message: str | None


def attempts_of(s: Any, node_id: int) -> list[Attempt]:
    """Every attempt of a node (the attempts table), newest first."""
    return [Attempt(a.number, a.host, a.account, a.job_id, a.workdir, a.exit_code, a.started_at or a.queued_at,
                    a.finished_at, a.outcome, a.message) for a in reversed(stored_attempts(s, node_id))]


def node(ui: Any, req: Any, node_id: int) -> tuple[str, dict[str, Any]]:
    """A node: attempts, outputs, progress, its group's children, stdout/stderr tails, its events."""
    level = _level(req.query.get("level"))
    after = _int(req.query.get("after"))
    with ui.api.sessions() as s:
        found, wf = queries.node(s, node_id, scope_of(req.user))
        parents = queries.parents_of(s, found.id)
        children = None
        more = None
        if found.kind in ("sweep", "member"):
            children = queries.children(s, found.id, after, CHILD_ROWS + 1)
            if len(children) > CHILD_ROWS:
                children = children[:CHILD_ROWS]
                more = f"/ui/nodes/{found.id}?after={children[-1].id}"
        events = queries.events(s, wf.id, 0, level, EVENT_ROWS, found.path, newest=True)
        last = queries.last_event_id(s, wf.id)
        attempts = attempts_of(s, found.id)
        owner = queries.user_name(s, wf.owner_id)
        eta = estimate_text(ui.api.estimates.cached(f"{wf.global_id}/{found.path}",
                                                    lambda: estimate_node(s, found.id)))
    outputs = [(name, value if isinstance(value, str) else json.dumps(value))
               for name, value in sorted((found.outputs or {}).items())]
    streams: list[Tail | None] = []
    if found.workdir and found.host and ui.api.engine.is_remote(found.host):
        # its files are on that host (a path there, never read here even when it exists here too)
        streams = [remote_tail(ui, found, owner, name) for name in ("stdout", "stderr")]
    elif found.workdir:
        streams = [tail(found.workdir, name) for name in ("stdout", "stderr")]
    gid = node_global_id(wf.global_id, found.path)
    return "node.html", dict(
        node=found, wf=wf, gid=gid, parents=parents, children=children, more_children=more, outputs=outputs,
        streams=[st for st in streams if st is not None], attempts=attempts, eta=eta,
        events=events, level_names=LEVEL_NAMES, last_event=last, here=f"/ui/nodes/{found.id}",
        events_after=events[-1].id if events else 0,
        events_feed=f"/ui/workflows/{wf.global_id}/events.json?" + urllib.parse.urlencode(
            {"level": LEVEL_NAMES[level], "node": found.path}))


def node_live(ui: Any, req: Any, node_id: int) -> dict[str, Any]:
    """A node page's feed: its state, progress and message."""
    with ui.api.sessions() as s:
        row = queries.node_state(s, node_id, scope_of(req.user))
    return {"state": row.state, "progress": row.progress, "message": row.message or ""}


@dataclass(frozen=True, slots=True)
class Tail:
    name: str
    text: str
    lines: list[str]
    cut: bool


def tail(workdir: str, name: str) -> Tail | None:
    """The last lines of ``<workdir>/<name>`` (bounded), None when it cannot be read here (a remote host:
    :func:`remote_tail`).

    Neither the directory nor the file is followed if it is a symbolic link: the payload owns its work
    directory, and must not make the broker show another file.
    """
    try:
        folder = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        start = max(0, info.st_size - TAIL_BYTES)
        fh.seek(start)
        data = fh.read(TAIL_BYTES)
    return _tail_of(name, data, start > 0)


def remote_tail(ui: Any, found: Any, owner: str, name: str) -> Tail | None:
    """The end of a remote attempt's stream, read on its host as its owner (one bounded command, 10 s at most)."""
    data = ui.api.engine.output_tail(found.host, owner, found.workdir, name, TAIL_BYTES + 1)
    if data is None:
        return None
    return _tail_of(name, data[-TAIL_BYTES:], len(data) > TAIL_BYTES)


def _tail_of(name: str, data: bytes, started_inside: bool) -> Tail:
    lines = data.decode("utf-8", "replace").splitlines()
    cut = started_inside or len(lines) > TAIL_LINES
    if started_inside and lines:
        lines = lines[1:]  # the first one is cut in the middle
    lines = lines[-TAIL_LINES:]
    return Tail(name, "\n".join(lines), lines, cut)


# --------------------------------------------------------------------------------------------- events

def events_page(ui: Any, req: Any, global_id: str) -> tuple[str, dict[str, Any]]:
    level = _level(req.query.get("level"))
    with ui.api.sessions() as s:
        wf, _ = queries.workflow(s, global_id, scope_of(req.user))
        events = queries.events(s, wf.id, 0, level, EVENT_ROWS, newest=True)
        earlier = len(events) == EVENT_ROWS
    return "events.html", dict(
        wf=wf, events=events, level=level, levels=LEVELS, level_names=LEVEL_NAMES, earlier=earlier,
        shown=len(events), events_after=events[-1].id if events else 0,
        events_feed=f"/ui/workflows/{wf.global_id}/events.json?" + urllib.parse.urlencode(
            {"level": LEVEL_NAMES[level]}))


def events_feed(ui: Any, req: Any, global_id: str) -> dict[str, Any]:
    """Events after ``after`` (oldest first, at most EVENT_ROWS) for a page following them (see broker.ui.live)."""
    path = (req.query.get("node") or "")[:1024] or None
    return {"events": ui.tails.answer(ui.api.sessions, req.user, global_id, _level(req.query.get("level")), path,
                                      _int(req.query.get("after")), event_row)}


def event_row(e: Any) -> list[Any]:
    """An event as the events feed sends it (the table's columns, its id first)."""
    return [e.id, e.time.strftime("%Y-%m-%d %H:%M:%S"), LEVEL_NAMES.get(e.level, str(e.level)), e.type,
            e.node_path or "", e.state or "", e.actor, e.message or ""]


def _level(text: str | None) -> int:
    try:
        return EventLevel.parse(text or "PROGRESS").value
    except KeyError:
        return EventLevel.PROGRESS.value


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() and len(text) < 19 else 0


__all__ = ["workflows", "workflows_feed", "workflow", "workflow_live", "node", "node_live", "events_page", "events_feed"]
