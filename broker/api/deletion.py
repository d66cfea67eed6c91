"""Deleting workflows: one rule set for every delete operation of the API.

"Completed" is any terminal state (succeeded, failed, cancelled). Bulk deletes skip workflows that are still
running and report them: in the broker's log and in an ADMIN_ACTION event (service-level, visible to admins
through getStatusInfo) that lists what was deleted and what was skipped. Deleting one running workflow is
refused (Client.InvalidState). The rows go in one transaction; the writer records the event afterwards, so
event ids keep increasing in commit order.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select

from broker.api.context import ApiContext
from broker.errors import NotFound, StateError
from broker.events.types import EventType
from broker.ids import split_global_id
from broker.persistence import changes as c
from broker.persistence import queries
from broker.persistence.models import Workflow

log = logging.getLogger(__name__)

#: most global ids an ADMIN_ACTION event lists (the counts are always complete)
LISTED = 100


def delete_selection(api: ApiContext, actor: str, what: str, *, owner_id: int | None = None,
                     finished_before: dt.datetime | None = None, completed_only: bool = False) -> queries.Deletion:
    """Delete the finished workflows of a selection; running ones are skipped and reported."""
    with api.sessions.begin() as s:
        ok, skipped = queries.deletion_candidates(s, owner_id=owner_id, finished_before=finished_before,
                                                  completed_only=completed_only)
        queries.delete_workflows(s, [r.id for r in ok])
    result = queries.Deletion(tuple(r.global_id for r in ok), tuple(r.global_id for r in skipped))
    _forget(api, [r.id for r in ok])
    _record(api, actor, what, result)
    return result


def delete_one(api: ApiContext, actor: str, global_id: str, owner_id: int | None = None) -> queries.Deletion:
    """Delete one finished workflow by global id. Raises NotFound, or StateError while it runs."""
    try:
        wf_gid, path = split_global_id(global_id or "")
    except ValueError as exc:
        raise NotFound(str(exc)) from None
    if path:
        raise NotFound(f"{global_id!r} names a node: only whole workflows can be deleted")
    with api.sessions.begin() as s:
        workflow = s.execute(select(Workflow).where(Workflow.global_id == wf_gid)).scalar_one_or_none()
        if workflow is None or (owner_id is not None and workflow.owner_id != owner_id):
            raise NotFound(f"no workflow {wf_gid}")
        blocker = queries.check_deletable(s, workflow)
        if blocker is not None:
            raise StateError(f"cannot delete: {blocker} (cancel it first)")
        workflow_id = workflow.id
        if not queries.delete_workflows(s, [workflow_id]):
            raise StateError(f"cannot delete: workflow {wf_gid} was restarted meanwhile")
    result = queries.Deletion((wf_gid,), ())
    _forget(api, [workflow_id])
    _record(api, actor, f"delete {wf_gid}", result)
    return result


def _forget(api: ApiContext, workflow_ids: list[int]) -> None:
    plans = getattr(getattr(api.engine, "ctx", None), "plans", None)
    if plans is not None:
        for workflow_id in workflow_ids:
            plans.forget(workflow_id)


def _record(api: ApiContext, actor: str, what: str, result: queries.Deletion) -> None:
    message = f"{what}: deleted {len(result.deleted)} workflow(s)"
    if result.skipped:
        message += f", skipped {len(result.skipped)} still running: {', '.join(result.skipped[:LISTED])}"
    log.info("%s by %s", message, actor)
    api.engine.writer.tell(c.Note(workflow_id=None, type=EventType.ADMIN_ACTION.value, actor=actor, message=message,
                                  properties={"operation": what, "deleted": len(result.deleted),
                                              "skipped": len(result.skipped),
                                              "deleted_ids": list(result.deleted[:LISTED]),
                                              "skipped_ids": list(result.skipped[:LISTED])}))
