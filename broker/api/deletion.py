"""Deleting and archiving workflows through the API: the rules of :mod:`broker.admin.delete`, inside the broker.

"Completed" is any terminal state (succeeded, failed, cancelled). Bulk deletes skip workflows that are still
running (and, with a bus configured, those whose final events are not yet published) and report them: in
the broker's log and in an ADMIN_ACTION event (service-level, visible to admins through getStatusInfo) that
lists what was deleted and what was skipped. Deleting one such workflow is refused (Client.InvalidState).
The engine's writer deletes the rows and records the event in one commit (so event ids keep increasing in
commit order), then the work directories go.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from broker.admin.delete import Deleter, Selection, broker_deleter
from broker.api.context import ApiContext
from broker.persistence import queries


def deleter_for(api: ApiContext, actor: str) -> Deleter:
    """A Deleter that records through the running broker's writer and forgets deleted workflows' plans (in an
    API process without an engine: one that asks the writer's machine, see broker.api.rows)."""
    if api.make_deleter is not None:
        return api.make_deleter(actor, api.settings.events.publishing)
    return broker_deleter(api.engine, actor, api.settings.database_url(),
                          require_drained=api.settings.events.publishing)


def delete_selection(api: ApiContext, actor: str, what: str, *, owner_id: int | None = None,
                     finished_before: dt.datetime | None = None, completed_only: bool = False) -> queries.Deletion:
    """Delete the finished workflows of a selection; the others are skipped and reported."""
    deleter = deleter_for(api, actor)
    plan = deleter.plan(Selection(owner_id=owner_id, finished_before=finished_before, completed_only=completed_only))
    return deleter.delete(plan.deletable, what, skipped=plan.skipped)


def delete_one(api: ApiContext, actor: str, global_id: str, owner_id: int | None = None) -> queries.Deletion:
    """Delete one finished workflow by global id. Raises NotFound, or StateError while it cannot go."""
    return deleter_for(api, actor).delete_one(global_id or "", f"delete {global_id}", owner_id)


def archive(api: ApiContext, actor: str, archive_uri: str | None, configuration_xml: str | None) -> Any:
    """``archiveWorkflowsTo``: archive (and perhaps delete) the workflows the selection document chooses."""
    from broker.admin.archive import archive_workflows
    from broker.admin.selection import parse_selection
    from broker.admin.targets import open_target
    from broker.errors import ConfigError

    if not archive_uri:
        raise ConfigError("archiveWorkflowsTo needs an archive URI (file:///DIR or sftp://HOST/DIR)")
    selection = parse_selection(configuration_xml, filename="configurationXml")
    target = open_target(archive_uri, api.settings.archive, api.engine.resources, actor.partition(":")[2])
    try:
        return archive_workflows(target, selection, deleter_for(api, actor),
                                 max_file_bytes=api.settings.archive.max_file_bytes)
    finally:
        target.close()
