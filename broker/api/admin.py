"""The admin service (``IBroker``): every operation needs the admin role (Client.NotAuthorized otherwise).

As in the Java interfaces, IBroker extends IBrokerCore: the service offers every core operation too (same
signatures and behaviour, in the admin namespace).

``cancel`` and ``restart`` are the core's (an admin's act on anyone's workflows); ``delete*`` follow the rules
of :mod:`broker.api.deletion`; ``deleteAllBefore`` takes epoch milliseconds and compares the finish time.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from spyne import Array, Integer64, ServiceBase, Unicode, rpc

from broker.api import deletion, wire
from broker.api.core import core_operations
from broker.api.identity import caller, require_admin
from broker.api.types import ADMIN_NS, AggregateSummary, HostInfo, UserSubmissions, fault_class
from broker.errors import ConfigError

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

    @rpc(_returns=Array(HostInfo, wrapped=False), _out_variable_name="return", _throws=AdminFault)
    def getHosts(ctx):
        """Every host of the catalogue, in its order, with tags, limits and nodes in flight."""
        api, _ = _admin(ctx, "getHosts")
        return wire.hosts(api)

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


#: IBroker: every core operation, then operating the service
BrokerAdminService = type(ServiceBase)("BrokerAdminService", (ServiceBase,), {
    "__module__": __name__, **core_operations(AdminFault),
    **{name: value for name, value in vars(_AdminOperations).items() if getattr(value, "_is_rpc", False)}})
