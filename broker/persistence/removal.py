"""The writer's side of deleting finished workflows (:class:`~broker.persistence.changes.DeleteWorkflows`).

The rows go, and the service-level ADMIN_ACTION event saying what went is recorded, in the writer's
transaction, as every other change: event ids keep increasing in commit order, and the deletion is guarded by
the broker's lease like any commit. The rules of what may go are :func:`queries.delete_finished`'s, checked
again inside the DELETE. Work directories are the deleter's (:mod:`broker.admin.delete`), after the commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from broker.events.types import EventType
from broker.persistence import queries
from broker.persistence.changes import DeleteWorkflows, Deleted
from broker.persistence.writeset import WriteSet

#: most global ids an ADMIN_ACTION event lists (the counts are always complete)
LISTED = 100


def delete_workflows(store: Any, s: Session, ch: DeleteWorkflows, batch: WriteSet, out: Any) -> None:
    """Apply a DeleteWorkflows change: a handler of :class:`~broker.persistence.store.Store` (``store``), which
    imports this module; ``out`` is the commit's Outcome."""
    # one the writer holds in memory is running, or changed in this very batch: its rows are not the truth yet
    candidates = [w.workflow_id for w in ch.workflows if w.workflow_id not in store.mirror.workflows]
    deleted = set(queries.delete_finished(s, candidates, require_drained=ch.require_drained,
                                          last_event_id=ch.last_event_id))
    gone = [w for w in ch.workflows if w.workflow_id in deleted]
    left = [w.global_id for w in ch.workflows if w.workflow_id not in deleted]
    result = queries.Deletion(
        tuple(w.global_id for w in gone), (*ch.skipped, *left),
        (*ch.reasons, *(f"workflow {gid} changed meanwhile (restarted, or new events)" for gid in left)))
    message, properties = report(ch.what, result, ch.properties)
    batch.event(None, EventType.ADMIN_ACTION, actor=ch.actor, message=message, properties=properties)
    if ch.reply_to is not None:
        out.replies.append((ch.reply_to, Deleted(result, tuple(w.workflow_id for w in gone))))


def report(what: str, result: queries.Deletion, extra: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The message and properties of the service-level ADMIN_ACTION event of a deletion."""
    message = f"{what}: deleted {len(result.deleted)} workflow(s)"
    if result.skipped:
        message += f", skipped {len(result.skipped)}: {', '.join(result.skipped[:LISTED])}"
    properties = {"operation": what, "deleted": len(result.deleted), "skipped": len(result.skipped),
                  "deleted_ids": list(result.deleted[:LISTED]), "skipped_ids": list(result.skipped[:LISTED]),
                  "skipped_reasons": list(result.reasons[:LISTED]), **(extra or {})}
    return message, properties
