"""Completion estimates of running nodes and workflows: the bounded reads :mod:`broker.estimates` works on.

History is the successful attempts of earlier workflows *of the same name*, node by template (the path
without sweep indexes): the newest :data:`PAST_RUNS` such workflows (index ``ix_workflows_name``), at most
:data:`HISTORY_ROWS` of their attempts (index ``ix_attempts_history``: workflow, template). The current run is read from its node rows: ended nodes give the run's pace,
running ones their elapsed time and progress, the rest and the DAG what is left to replay. A workflow of
more than :data:`MAX_NODES` nodes gets no estimate (reading it would cost more than an estimate is worth).

For the CLI, the SOAP API and the dashboard: :func:`estimate_workflow`, :func:`estimate_node`.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.estimates import History, Interval, Task, estimate_remaining, observed_slots, remaining_of_running
from broker.estimates import estimate_node as node_remaining
from broker.estimates import run_sigma
from broker.persistence.models import Attempt, Dependency, Node, Workflow
from broker.states import IN_FLIGHT, TERMINAL, NodeState

#: earlier workflows of the same name read for history
PAST_RUNS = 20
#: most past attempts read per estimate (the newest first)
HISTORY_ROWS = 5000
#: most nodes a workflow may have to be estimated
MAX_NODES = 200_000

_IN_FLIGHT = frozenset(s.value for s in IN_FLIGHT)
_ENDED = frozenset(s.value for s in TERMINAL)
_RUNNING_WORKFLOW = ("accepted", "running")


@dataclass(frozen=True, slots=True)
class Estimate:
    """When a node or a workflow should end: 10th percentile, median, 90th percentile (UTC)."""

    p10: dt.datetime
    p50: dt.datetime
    p90: dt.datetime
    #: past attempts the estimate read
    basis: int

    @staticmethod
    def of(now: dt.datetime, remaining: Interval, basis: int) -> Estimate:
        return Estimate(now + dt.timedelta(seconds=remaining.p10), now + dt.timedelta(seconds=remaining.p50),
                        now + dt.timedelta(seconds=remaining.p90), basis)


def _seconds(end: dt.datetime | None, start: dt.datetime | None) -> float:
    return max(0.0, (end - start).total_seconds()) if end is not None and start is not None else 0.0


def history(s: Session, name: str, exclude: int, template: str | None = None) -> tuple[History, int]:
    """The history of workflows named ``name`` (not ``exclude``) and how many attempts it holds."""
    past = s.execute(select(Workflow.id).where(Workflow.name == name, Workflow.id != exclude)
                     .order_by(Workflow.id.desc()).limit(PAST_RUNS)).scalars().all()
    if not past:
        return History({}), 0
    query = select(Attempt.template, Attempt.workflow_id, Attempt.started_at, Attempt.finished_at).where(
        Attempt.workflow_id.in_(past), Attempt.outcome == "succeeded", Attempt.started_at.is_not(None))
    if template is not None:
        query = query.where(Attempt.template == template)
    rows = s.execute(query.order_by(Attempt.id.desc()).limit(HISTORY_ROWS)).all()
    durations: dict[str, list[float]] = {}
    per_run: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        seconds = _seconds(row.finished_at, row.started_at)
        durations.setdefault(row.template, []).append(seconds)
        per_run.setdefault(row.workflow_id, {}).setdefault(row.template, []).append(seconds)
    medians = {t: statistics.median(ds) for t, ds in durations.items()}
    runs = list(per_run.values())
    counts = {t: statistics.median(len(run.get(t, ())) for run in runs) for t in durations}
    return History(durations, run_sigma(runs, medians), counts), len(rows)


def _tasks(s: Session, workflow_id: int, now: dt.datetime) -> tuple[list[Task], int, int] | None:
    """The run's work-carrying nodes as tasks, with (in flight, ready) counts; None when too big to read."""
    total = s.execute(select(func.count()).select_from(Node).where(Node.workflow_id == workflow_id)).scalar_one()
    if total > MAX_NODES:
        return None
    rows = s.execute(select(Node.id, Node.template, Node.kind, Node.state, Node.members, Node.parent_id,
                            Node.progress, Node.started_at, Node.finished_at)
                     .where(Node.workflow_id == workflow_id)).all()
    inside: dict[int, list[int]] = {}
    for r in rows:
        if r.parent_id is not None:
            inside.setdefault(r.parent_id, []).append(r.id)
    deps: dict[int, list[int]] = {}
    for parent, child in s.execute(select(Dependency.parent_id, Dependency.child_id).join(
            Node, Node.id == Dependency.child_id).where(Node.workflow_id == workflow_id)):
        deps.setdefault(child, []).append(parent)
    tasks: list[Task] = []
    in_flight = ready = 0
    for r in rows:
        group = r.kind == "member" or (r.kind == "sweep" and r.members is not None)
        edges = tuple(deps.get(r.id, ()))
        if r.state in _ENDED:
            ok = r.state == NodeState.SUCCEEDED.value and not group
            tasks.append(Task(r.id, r.template, "done", _seconds(r.finished_at, r.started_at) if ok else 0.0))
        elif group:  # ends with everything inside it: an instant task after them
            tasks.append(Task(r.id, r.template, "instant", deps=edges + tuple(inside.get(r.id, ()))))
        elif r.kind == "sweep":
            tasks.append(Task(r.id, r.template, "waiting", deps=edges, sweep=True))
        elif r.state in _IN_FLIGHT:
            in_flight += 1
            tasks.append(Task(r.id, r.template, "running", _seconds(now, r.started_at), r.progress, edges))
        else:
            ready += r.state == NodeState.READY.value
            tasks.append(Task(r.id, r.template, "waiting", deps=edges))
    return tasks, in_flight, ready


def _any_ended(s: Session, workflow_id: int) -> bool:
    """Whether a node of the workflow has ended (then its own pace says something)."""
    return s.execute(select(Node.id).where(Node.workflow_id == workflow_id, Node.state.in_(_ENDED))
                     .limit(1)).first() is not None


def estimate_workflow(s: Session, workflow_id: int, now: dt.datetime | None = None,
                      slots: int | None = None) -> Estimate | None:
    """When a running workflow should end (p10-p90), or None: ended, too big, or nothing to go on.

    ``slots``: the broker's limit of nodes in flight, when the caller knows it."""
    now = now or dt.datetime.now(dt.timezone.utc)
    wf = s.get(Workflow, workflow_id)
    if wf is None or wf.state not in _RUNNING_WORKFLOW:
        return None
    past, basis = history(s, wf.name, wf.id)
    if not past.durations and not _any_ended(s, workflow_id):
        # nothing to go on (estimate_remaining would say None): the first estimate of a first run, as
        # `broker run` asks it right after the submission, need not read the nodes and their edges
        return None
    read = _tasks(s, workflow_id, now)
    if read is None:
        return None
    tasks, in_flight, ready = read
    limits = [n for n in (wf.max_in_flight, slots, observed_slots(in_flight, ready)) if n]
    remaining = estimate_remaining(tasks, past, slots=min(limits) if limits else None)
    return None if remaining is None else Estimate.of(now, remaining, basis)


def estimate_node(s: Session, node_id: int, now: dt.datetime | None = None) -> Estimate | None:
    """When a node in flight should end (p10-p90), or None: not in flight, or nothing to go on."""
    now = now or dt.datetime.now(dt.timezone.utc)
    node = s.get(Node, node_id)
    if node is None or node.state not in _IN_FLIGHT:
        return None
    wf = s.get(Workflow, node.workflow_id)
    past, basis = history(s, wf.name, wf.id)
    ended = s.execute(select(Node.template, Node.started_at, Node.finished_at).where(
        Node.workflow_id == wf.id, Node.state == NodeState.SUCCEEDED.value, Node.kind == "node")
        .limit(HISTORY_ROWS)).all()
    run = [Task(i, r.template, "done", _seconds(r.finished_at, r.started_at)) for i, r in enumerate(ended)]
    elapsed = _seconds(now, node.started_at)
    remaining = node_remaining(node.template, elapsed, node.progress, past, run)
    if remaining is None and node.progress and 0 < node.progress < 100 and elapsed > 0:
        # no history at all: its own rate is all there is
        remaining = remaining_of_running(elapsed * 100 / node.progress, 0.35, elapsed, node.progress)
    return None if remaining is None else Estimate.of(now, remaining, basis + len(run))
