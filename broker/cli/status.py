"""``broker status [ID]``: what the database says about workflows and nodes (read only, never migrates).

Without ID: a table of the newest workflows (``--limit N``, default 20; ``--all``). With a workflow ID
(global id or number): a header, node counts by state and a node table; a large workflow shows the nodes
that need attention first (failed, running, ...), up to ``--nodes N`` (default 50; ``--nodes all``). With
a node global id: that node's details, its outputs and its work directory. ``--json`` prints the same as
a JSON document. A node also shows every attempt it made (outcome, host, job id, exit code, times, work
directory, message). A running workflow or node shows its estimated end, a p10-p90 interval from the
durations of earlier attempts of the same node (broker.persistence.estimates). Unknown ID: exit 2.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli import EXIT_OK, UsageError, add_db_option
from broker.cli.common import (done_total, iso, local_time, node_counts, not_found_is_usage,
                               ordered_counts, print_fields, print_json, print_table, reader, resolve,
                               sqlite_file_missing, stops_when_output_closes)
from broker.printable import printable

#: workflows listed without --all
DEFAULT_LIMIT = 20
#: nodes listed for one workflow without --nodes
DEFAULT_NODES = 50
#: which nodes a truncated node table shows first (lower first)
ATTENTION = {"failed": 0, "running": 1, "staging_out": 1, "queued": 1, "staging_in": 1, "retry_wait": 2,
             "cancelled": 3, "skipped": 4, "ready": 5, "waiting": 6, "succeeded": 7}


def _count_or_all(text: str) -> int | None:
    if text == "all":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive number or 'all', got {text!r}")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``status`` command."""
    parser = subparsers.add_parser(
        "status", parents=[common], help="show workflows, one workflow, or one node",
        description="Without ID: the newest workflows. With a workflow id (wf-... or its number): its counts "
                    "and nodes. With a node id (wf-.../path): the node's details. Exit 2: unknown ID.")
    parser.add_argument("id", nargs="?", metavar="ID", help="workflow global id, node global id, or number")
    add_db_option(parser)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                        help=f"workflows to list (default {DEFAULT_LIMIT})")
    parser.add_argument("--all", action="store_true", help="list every workflow")
    parser.add_argument("--nodes", type=_count_or_all, default=DEFAULT_NODES, metavar="N|all",
                        help=f"nodes to list for a workflow (default {DEFAULT_NODES}; failed and running first)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.set_defaults(func=status)


@stops_when_output_closes
@not_found_is_usage
def status(args: argparse.Namespace, settings: Any) -> int:
    """Print the status of the workflows, of one workflow or of one node."""
    if args.limit <= 0:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    if args.id is None and sqlite_file_missing(settings.database_url()) is not None:
        # the embedded database is created on first use: before that, there is simply nothing to show
        if args.json:
            print_json([])
        else:
            print("no workflows")
        return EXIT_OK
    with reader(settings) as sessions, sessions() as s:
        if args.id is None:
            _workflows(s, None if args.all else args.limit, args.json)
            return EXIT_OK
        target = resolve(s, args.id)
        if target.node_id is None:
            _workflow(s, target.workflow_id, args.nodes, args.json)
        else:
            _node(s, target.node_id, target.global_id, args.json)
    return EXIT_OK


# ------------------------------------------------------------------------------------------- workflows

def _workflows(s: Any, limit: int | None, as_json: bool) -> None:
    from sqlalchemy import select

    from broker.persistence.models import User, Workflow

    query = (select(Workflow.id, Workflow.global_id, Workflow.name, User.name.label("owner"), Workflow.state,
                    Workflow.submitted_at, Workflow.finished_at)
             .join(User, User.id == Workflow.owner_id).order_by(Workflow.id.desc()))
    rows = s.execute(query if limit is None else query.limit(limit)).all()
    counts = node_counts(s, [r.id for r in rows])
    if as_json:
        print_json([{"id": r.id, "global_id": r.global_id, "name": r.name, "owner": r.owner, "state": r.state,
                     "done": done_total(counts[r.id])[0], "total": done_total(counts[r.id])[1],
                     "submitted_at": iso(r.submitted_at), "finished_at": iso(r.finished_at)} for r in rows])
        return
    if not rows:
        print("no workflows")
        return
    table = []
    for r in rows:
        done, total = done_total(counts[r.id])
        table.append((r.id, r.global_id, r.name, r.owner, r.state, f"{done}/{total}", local_time(r.submitted_at),
                      local_time(r.finished_at)))
    print_table(("ID", "GLOBAL ID", "NAME", "OWNER", "STATE", "DONE", "SUBMITTED", "FINISHED"), table)
    if limit is not None and len(rows) == limit:
        print(f"(the newest {limit}; --all lists every workflow)")


# -------------------------------------------------------------------------------------------- workflow

def _estimate_json(est: Any) -> dict[str, Any] | None:
    return None if est is None else {"p10": iso(est.p10), "p50": iso(est.p50), "p90": iso(est.p90),
                                     "basis": est.basis}


def _estimate_text(est: Any) -> str:
    """``2026-12-06 21:03:10 to 21:09:45 (most likely 21:05:02)``: the p10-p90 interval and the median."""
    if est is None:
        return "-"
    low, mid, high = local_time(est.p10), local_time(est.p50), local_time(est.p90)
    same_day = low[:10] == high[:10] == mid[:10]
    return (f"{low} to {high[11:] if same_day else high} (most likely {mid[11:] if same_day else mid}; "
            f"from {est.basis} earlier attempts)")


def _workflow(s: Any, workflow_id: int, limit: int | None, as_json: bool) -> None:
    from sqlalchemy import case, func, select

    from broker.persistence.estimates import estimate_workflow
    from broker.persistence.models import Node, User, Workflow

    wf = s.get(Workflow, workflow_id)
    estimate = estimate_workflow(s, workflow_id)
    owner = s.get(User, wf.owner_id).name
    counts = node_counts(s, [workflow_id])[workflow_id]
    done, total = done_total(counts)
    stored = s.execute(select(func.count()).select_from(Node).where(Node.workflow_id == workflow_id)).scalar_one()
    query = select(Node.id, Node.path, Node.kind, Node.state, Node.attempt, Node.exit_code, Node.host,
                   Node.message).where(Node.workflow_id == workflow_id)
    if limit is not None and stored > limit:
        # the nodes that need attention first (chosen by the database: a workflow may have 100,000 nodes)
        query = query.order_by(case(ATTENTION, value=Node.state, else_=len(ATTENTION)), Node.id).limit(limit)
    shown = sorted(s.execute(query).all(), key=lambda n: n.id)  # in workflow order
    if as_json:
        print_json({
            "id": wf.id, "global_id": wf.global_id, "name": wf.name, "owner": owner, "state": wf.state,
            "label": wf.label, "cancel_requested": wf.cancel_requested, "submitted_at": iso(wf.submitted_at),
            "started_at": iso(wf.started_at), "finished_at": iso(wf.finished_at), "counts": counts,
            "done": done, "total": total, "nodes_shown": len(shown), "nodes_stored": stored,
            "origin": _origin(wf), "arguments": dict(wf.arguments or ()),
            "estimated_end": _estimate_json(estimate),
            "nodes": [{"path": n.path, "global_id": f"{wf.global_id}/{n.path}", "kind": n.kind, "state": n.state,
                       "attempt": n.attempt, "exit_code": n.exit_code, "host": n.host, "message": n.message}
                      for n in shown],
        })
        return
    header = [("workflow", f"{wf.global_id} (id {wf.id})"), ("name", wf.name), ("owner", owner),
              ("state", wf.state + (" (cancel requested)" if wf.cancel_requested and wf.state in
                                    ("accepted", "running") else "")),
              ("nodes", f"{done}/{total} done: " + ", ".join(f"{st} {n}" for st, n in ordered_counts(counts))),
              ("submitted", local_time(wf.submitted_at)), ("started", local_time(wf.started_at)),
              ("finished", local_time(wf.finished_at))]
    if wf.state in ("accepted", "running"):
        header.append(("estimated end", _estimate_text(estimate)))
    if wf.label:
        header.insert(2, ("label", wf.label))
    if wf.arguments:
        header.insert(2, ("arguments", ", ".join(f"{name}={value}" for name, value in wf.arguments)))
    if wf.origin_name is not None:
        header.insert(2, ("from", _origin(wf)))
    print_fields(header)
    print()
    print_table(("NODE", "KIND", "STATE", "ATTEMPT", "EXIT", "HOST", "MESSAGE"),
                [(n.path, n.kind, n.state, n.attempt, "" if n.exit_code is None else n.exit_code, n.host or "",
                  n.message) for n in shown], wrap_last=True)
    if len(shown) < stored:
        print(f"... {stored - len(shown)} more nodes (--nodes all shows every node)")


def _origin(wf: Any) -> str | None:
    """``NAME@VERSION`` of the stored workflow it was submitted from, None for a description given whole."""
    return None if wf.origin_name is None else f"{wf.origin_name}@{wf.origin_version}"


# ------------------------------------------------------------------------------------------------ node

def _node(s: Any, node_id: int, global_id: str, as_json: bool) -> None:
    from sqlalchemy import select

    from broker.persistence.attempts import attempts_of
    from broker.persistence.estimates import estimate_node
    from broker.persistence.models import Dependency, Node

    node = s.get(Node, node_id)
    attempts = attempts_of(s, node_id)
    estimate = estimate_node(s, node_id)
    bindings = _visible_bindings(s, node)
    parents = s.execute(select(Node.path).join(Dependency, Dependency.parent_id == Node.id)
                        .where(Dependency.child_id == node_id).order_by(Node.id)).scalars().all()
    details = {
        "global_id": global_id, "path": node.path, "kind": node.kind, "state": node.state,
        "attempt": node.attempt, "retries": node.retries, "exit_code": node.exit_code, "host": node.host,
        "job_id": node.job_id, "workdir": node.workdir, "progress": node.progress, "message": node.message,
        "members": node.members, "parameters": dict(bindings),
        "depends_on": list(parents), "outputs": node.outputs or {},
        "created_at": iso(node.created_at), "started_at": iso(node.started_at), "finished_at": iso(node.finished_at),
        "attempts": [{"number": a.number, "outcome": a.outcome, "host": a.host, "account": a.account,
                      "job_id": a.job_id, "workdir": a.workdir, "exit_code": a.exit_code,
                      "queued_at": iso(a.queued_at), "started_at": iso(a.started_at),
                      "finished_at": iso(a.finished_at), "message": a.message} for a in attempts],
        "estimated_end": _estimate_json(estimate),
    }
    if as_json:
        print_json(details)
        return
    rows = [("node", global_id), ("kind", node.kind), ("state", node.state),
            ("attempt", f"{node.attempt} ({node.retries} automatic retries)"),
            ("exit code", "-" if node.exit_code is None else node.exit_code), ("host", node.host or "-"),
            ("job id", node.job_id or "-"), ("work dir", node.workdir or "-"),
            ("progress", "-" if node.progress is None else f"{node.progress:g}%"),
            ("started", local_time(node.started_at)), ("finished", local_time(node.finished_at)),
            ("depends on", ", ".join(parents) or "-"), ("message", node.message or "-")]
    if node.state in ("staging_in", "queued", "running", "staging_out"):
        rows.insert(rows.index(("finished", local_time(node.finished_at))) + 1,
                    ("estimated end", _estimate_text(estimate)))
    if node.members is not None:
        rows.insert(3, ("members", node.members))
    if bindings:
        rows.append(("parameters", ", ".join(f"{k}={v}" for k, v in bindings)))
    print_fields(rows)
    outputs = node.outputs or {}
    if outputs:
        print("outputs:")
        for name in sorted(outputs):
            print(printable(f"  {name} = {json.dumps(outputs[name], ensure_ascii=False)}"))
    if attempts:
        print()
        print_table(("ATTEMPT", "OUTCOME", "HOST", "JOB", "EXIT", "STARTED", "FINISHED", "WORKDIR", "MESSAGE"),
                    [(a.number, a.outcome or "in flight", a.host or "-", a.job_id or "-",
                      "-" if a.exit_code is None else a.exit_code, local_time(a.started_at),
                      local_time(a.finished_at), a.workdir or "-", a.message or "") for a in attempts])


def _visible_bindings(s: Any, node: Any) -> list[tuple[str, str]]:
    """Every parameter binding the node sees, outer sweeps first (only members store their own)."""
    from broker.persistence.models import Node

    chain = []
    current = node
    while current is not None:
        if current.bindings:
            chain.append([(name, value) for name, value in current.bindings])
        current = s.get(Node, current.parent_id) if current.parent_id is not None else None
    return [pair for level in reversed(chain) for pair in level]
