"""The admin service (``IBroker``): every operation needs the admin role (Client.NotAuthorized otherwise).

As in the Java interfaces, IBroker extends IBrokerCore: the service offers every core operation too (same
signatures and behaviour, in the admin namespace), and its own ``cancel`` and ``restart`` act on anyone's
workflows.

``cancel`` and ``restart`` take a workflow or a node global id and go through the engine's writer (this
broker holds the database); ``delete*`` follow the rules of :mod:`broker.api.deletion`; ``deleteAllBefore``
takes epoch milliseconds and compares the finish time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from spyne import Array, Integer64, ServiceBase, Unicode, rpc

from broker.api import deletion, wire
from broker.api.core import core_operations
from broker.api.identity import caller, require_admin
from broker.api.types import ADMIN_NS, AggregateSummary, UserSubmissions, fault_class
from broker.errors import ConfigError, NotFound
from broker.persistence import changes as c
from broker.persistence.control import resolve_target

AdminFault = fault_class(ADMIN_NS)


def _admin(ctx: Any, operation: str) -> tuple[Any, str]:
    """(the API context, the actor name) after checking the caller is an admin."""
    user = caller(ctx.transport.req_env)
    require_admin(user, operation)
    return ctx.app.api, f"admin:{user.name}"


class _AdminOperations:
    """IBroker's own operations: operating the service."""

    @rpc(_returns=Array(UserSubmissions, wrapped=False), _out_variable_name="return", _throws=AdminFault)
    def getUserInfo(ctx):
        """Every user with their workflows by state."""
        api, _ = _admin(ctx, "getUserInfo")
        return wire.users(api)

    @rpc(_returns=AggregateSummary, _out_variable_name="return", _throws=AdminFault)
    def getServiceState(ctx):
        """Workflows and nodes by state, hosts with jobs in flight, outbox backlog, uptime."""
        api, _ = _admin(ctx, "getServiceState")
        return wire.summary(api, None, None, service=True)

    @rpc(Unicode, _throws=AdminFault)
    def cancel(ctx, globalId):
        """Cancel a workflow, or one node (its dependants are skipped); returns once committed."""
        api, actor = _admin(ctx, "cancel")
        workflow_id, node_ids = _target(api, globalId)
        if node_ids is None:
            api.ask(lambda f: c.CancelWorkflow(workflow_id, actor, reply_to=f))
        else:
            api.ask(lambda f: c.CancelNodes(tuple(node_ids), actor, reply_to=f))

    @rpc(Unicode, _throws=AdminFault)
    def restart(ctx, globalId):
        """Give a workflow's (or a node's and its dependants') failed, cancelled, skipped nodes a fresh attempt."""
        api, actor = _admin(ctx, "restart")
        workflow_id, node_ids = _target(api, globalId)
        api.ask(lambda f: c.Restart(workflow_id, actor, None if node_ids is None else tuple(node_ids), reply_to=f))

    @rpc(_throws=AdminFault)
    def deleteAllCompleted(ctx):
        """Delete every finished workflow."""
        api, actor = _admin(ctx, "deleteAllCompleted")
        deletion.delete_selection(api, actor, "deleteAllCompleted", completed_only=True)

    @rpc(Integer64, _throws=AdminFault)
    def deleteAllBefore(ctx, time):
        """Delete the workflows that finished before ``time`` (epoch milliseconds); running ones are skipped."""
        api, actor = _admin(ctx, "deleteAllBefore")
        if time is None:
            raise ConfigError("deleteAllBefore needs a time (epoch milliseconds)")
        try:
            before = dt.datetime.fromtimestamp(time / 1000, dt.timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise ConfigError(f"deleteAllBefore: {time} is not a usable time in epoch milliseconds") from None
        deletion.delete_selection(api, actor, f"deleteAllBefore {before.isoformat()}", finished_before=before)

    @rpc(Unicode, _throws=AdminFault)
    def delete(ctx, globalId):
        """Delete one finished workflow; a running one is refused (Client.InvalidState)."""
        api, actor = _admin(ctx, "delete")
        deletion.delete_one(api, actor, globalId or "")


def _target(api: Any, global_id: str | None) -> tuple[int, list[int] | None]:
    if not global_id:
        raise NotFound("no global id given")
    with api.sessions() as s:
        return resolve_target(s, global_id)


#: IBroker: every core operation, then operating the service (its own cancel and restart replace the core's)
BrokerAdminService = type(ServiceBase)("BrokerAdminService", (ServiceBase,), {
    "__module__": __name__, **core_operations(AdminFault),
    **{name: value for name, value in vars(_AdminOperations).items() if getattr(value, "_is_rpc", False)}})
