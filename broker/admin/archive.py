"""Archiving finished workflows (and deleting them once archived): ``broker admin archive`` and
``archiveWorkflowsTo``.

For each selected workflow, in id order, one archive (see schemas/archive-record.xsd):

1. read what the archive holds (:func:`broker.admin.archive_record.read_snapshot`: the newest event id first);
2. write the bundle of its outputs, then its document, each atomically, then sync the target
   (crash points ``archive-bundle-written``, ``archive-written``);
3. only with ``deleteAfter``, and only now that the archive is complete and durable: delete the workflow
   (crash point ``archive-before-delete``) under the deletion rules (:mod:`broker.admin.delete`), refusing it
   if it has an event newer than the archive; the deletion and its service-level ADMIN_ACTION event, which
   names the archive, go together.

Without ``deleteAfter`` each archived workflow gets an ADMIN_ACTION event naming its archive. Every run
ends with a service-level ADMIN_ACTION event summing up what was archived, deleted and skipped. A crash
anywhere leaves each workflow intact or archived (and then perhaps deleted), never lost; running the same
selection again finishes the work (archives are rewritten whole, atomically).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.admin import archive_record
from broker.admin.delete import Deleter, work_directories
from broker.admin.selection import Selection
from broker.admin.targets import Target
from broker.crashpoints import crash_point
from broker.errors import NotFound
from broker.persistence import queries
from broker.persistence.models import User, Workflow
from broker.persistence.queries import WorkflowRow
from broker.persistence.removal import LISTED

log = logging.getLogger(__name__)


@dataclass
class ArchiveReport:
    """What an archive run did: archives written, workflows deleted, workflows left (with why)."""

    target: str
    #: (global id, URI of its archive document)
    archived: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    #: (global id or the id as given, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def plan_archive(sessions: sessionmaker[Session],
                 selection: Selection) -> tuple[list[WorkflowRow], list[WorkflowRow]]:
    """(finished workflows to archive, workflows matching the selection that are left out, with why).

    Raises NotFound for a user the selection names that does not exist.
    """
    with sessions() as s:
        query = queries.workflow_rows()
        if selection.users:
            known = set(s.execute(select(User.name).where(User.name.in_(selection.users))).scalars())
            missing = [u for u in selection.users if u not in known]
            if missing:
                raise NotFound(f"no user {missing[0]!r}")
            query = query.where(User.name.in_(selection.users))
        if selection.states:
            query = query.where(Workflow.state.in_(selection.states))
        missing_ids: list[str] = []
        wanted: set[int] | None = None
        if selection.ids:
            found = _named(s, selection.ids)
            missing_ids = [i for i in selection.ids if i not in found]
            wanted = set(found.values())
        rows = [WorkflowRow(*r) for r in s.execute(query) if wanted is None or r[0] in wanted]
    if selection.finished_before is not None:
        rows = [r for r in rows if r.finished_at is not None and r.finished_at < selection.finished_before]
    ok = [r for r in rows if r.state in queries.COMPLETED]
    left = [dataclasses.replace(r, reason=f"workflow {r.global_id} is still {r.state}")
            for r in rows if r.state not in queries.COMPLETED]
    left += [WorkflowRow(0, i, "", None, "", "", f"no workflow {i}") for i in missing_ids]
    return ok, left


def _named(s: Session, ids: tuple[str, ...]) -> dict[str, int]:
    """The workflows named by global id or number: name as given -> database id (unknown names left out)."""
    numbers = [int(i) for i in ids if i.isdigit()]
    gids = [i for i in ids if not i.isdigit()]
    found: dict[str, int] = {}
    for start in range(0, max(len(numbers), len(gids)), queries.DELETE_CHUNK):
        part_numbers = numbers[start:start + queries.DELETE_CHUNK]
        part_gids = gids[start:start + queries.DELETE_CHUNK]
        for workflow_id, gid in s.execute(select(Workflow.id, Workflow.global_id).where(
                Workflow.id.in_(part_numbers) | Workflow.global_id.in_(part_gids))):
            if workflow_id in part_numbers:
                found[str(workflow_id)] = workflow_id
            if gid in part_gids:
                found[gid] = workflow_id
    return found


def archive_workflows(target: Target, selection: Selection, deleter: Deleter, *, max_file_bytes: int,
                      progress: Callable[[str], None] | None = None) -> ArchiveReport:
    """Archive the selected workflows to ``target`` and, with ``delete_after``, delete them once archived."""
    report = ArchiveReport(target.uri)
    rows, left = plan_archive(deleter.sessions, selection)
    report.skipped += [(r.global_id, r.reason or "") for r in left]
    try:
        for row in rows:
            _one(target, selection, deleter, row, report, max_file_bytes)
            if progress is not None:
                progress(row.global_id)
    finally:
        _summary(deleter, selection, report)
    return report


def _one(target: Target, selection: Selection, deleter: Deleter, row: WorkflowRow, report: ArchiveReport,
         max_file_bytes: int) -> None:
    keep = selection.keep
    try:
        snap = archive_record.read_snapshot(deleter.sessions, row.id, keep)
    except NotFound:
        report.skipped.append((row.global_id, f"workflow {row.global_id} was deleted meanwhile"))
        return
    if snap.workflow.state not in queries.COMPLETED:
        report.skipped.append((row.global_id, f"workflow {row.global_id} is {snap.workflow.state} again "
                                              "(restarted meanwhile)"))
        return
    gid = row.global_id
    bundle = None
    if keep.outputs:
        dirs = [Path(d) for d in work_directories(deleter.sessions, [row], deleter.workdir_root)[gid]]
        name = f"{gid}.tar.gz"
        bundle = target.write(name, lambda fh: archive_record.write_bundle(fh, name, dirs, max_file_bytes))
        crash_point("archive-bundle-written")
    now = dt.datetime.now(dt.timezone.utc)
    target.write(f"{gid}.xml", lambda fh: archive_record.write_document(fh, snap, deleter.sessions, keep, bundle,
                                                                        deleter.recorder.actor, now))
    target.sync()
    crash_point("archive-written")
    document = target.uri_of(f"{gid}.xml")
    report.archived.append((gid, document))
    log.info("archived workflow %s to %s", gid, document)
    if not selection.delete_after:
        deleter.recorder.record(row.id, f"archived to {document}", {"operation": "archive", "archive": document})
        return
    crash_point("archive-before-delete")
    result = deleter.delete([row], f"archive to {target.uri} and delete {gid}", last_event_id=snap.last_event_id,
                            properties={"archive": document})
    if result.deleted:
        report.deleted.append(gid)
    else:
        report.skipped.append((gid, f"archived but not deleted: {result.reasons[0]}"))


def _summary(deleter: Deleter, selection: Selection, report: ArchiveReport) -> None:
    message = (f"archive to {report.target} ({selection.describe()}): archived {len(report.archived)}, "
               f"deleted {len(report.deleted)}, skipped {len(report.skipped)} workflow(s)")
    properties: dict[str, Any] = {
        "operation": "archive", "target": report.target, "selection": selection.describe(),
        "delete_after": selection.delete_after, "archived": len(report.archived), "deleted": len(report.deleted),
        "skipped": len(report.skipped), "archived_ids": [g for g, _ in report.archived[:LISTED]],
        "deleted_ids": report.deleted[:LISTED], "skipped_ids": [g for g, _ in report.skipped[:LISTED]],
        "skipped_reasons": [r for _, r in report.skipped[:LISTED]]}
    deleter.recorder.record(None, message, properties)
