"""ADMIN_ACTION events of cancel and restart, written where every cancel and restart is applied (the store).

The admin API, the user API, ``broker cancel``/``restart`` (directly or through the control table) and
``broker run``'s interrupt all end in one of the store's three changes (CancelWorkflow, CancelNodes,
Restart), so recording the event there gives each of them the event, committed with the change itself.

The caller's identity is the change's ``actor``: ``admin:<name>`` for someone acting with the admin role,
``user:<name>`` for a user. A user acting on their own workflow is its owner; a user acting on someone
else's workflow can only be the command line, which holds the database and so acts as an operator: that
is recorded as an admin. The event's actor is ``owner:<name>`` or ``admin:<name>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.events.types import EventType

if TYPE_CHECKING:
    from broker.persistence.writeset import WriteSet
    from broker.persistence.graph import MNode, MWorkflow

OWNER, ADMIN = "owner", "admin"


def role_of(actor: str, owner: str) -> tuple[str, str]:
    """(role, name) of the caller behind ``actor`` acting on a workflow of ``owner``."""
    kind, _, name = actor.partition(":")
    if not name:  # an engine component (no person behind it): acts for the service
        return ADMIN, actor
    if kind == "user" and name == owner:
        return OWNER, name
    return ADMIN, name


def record(batch: WriteSet, wf: MWorkflow, targets: list[MNode] | None, operation: str, actor: str,
           **details: int) -> None:
    """Add the ADMIN_ACTION event of a cancel or restart of ``wf`` (``targets`` None: the whole workflow)."""
    role, name = role_of(actor, wf.owner)
    ids = [wf.global_id] if targets is None else [f"{wf.global_id}/{n.path}" for n in targets]
    node = targets[0] if targets is not None and len(targets) == 1 else None
    batch.event(wf, EventType.ADMIN_ACTION, actor=f"{role}:{name}", node=node,
                message=f"{operation} of {', '.join(ids)} by {role} {name}",
                properties={"operation": operation, "targets": ids, "by": name, "role": role, **details})
