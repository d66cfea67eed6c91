"""The core service (``IBrokerCore``): submit, the elves' push channel, reads of one's own workflows.

Authorisation, checked here in each operation (the edge has already authenticated the caller):

* every operation but ``updateNodeStatus`` needs a user; a user sees and acts on their own workflows,
  nodes and events only (another user's are "not found"); an admin sees everyone's;
* an argument naming another user (``submission.user``, ``getStateForUser``, ``getStatusInfoForUser``,
  ``deleteAllForUser``) is refused with Client.NotAuthorized unless the caller is an admin;
* ``updateNodeStatus`` needs the elf session of the attempt (Client.InvalidCredentials otherwise), and its
  ``sessionId`` argument must be that session;
* ``cancel`` and ``restart`` (a documented widening of the Java IBrokerCore, which had them only in IBroker)
  act on the caller's own workflows and nodes (an admin's: anyone's); another user's is "not found";
* ``archiveWorkflowsTo`` needs the admin role; it writes one archive per workflow to ``file://`` under
  ``[archive] roots`` or ``sftp://`` under ``[archive] remote_roots`` (see broker.admin.archive).
"""

from __future__ import annotations

from typing import Any

from spyne import Array, Boolean, Integer32, Integer64, ServiceBase, Unicode, rpc

from broker.api import deletion, push, wire
from broker.api import submission as submissions
from broker.api.identity import ELF_KEY, caller, named_user, require_admin, scope_of
from broker.api.submission import SubmissionFields
from broker.api.types import (CORE_NS, AggregateSummary, BrokerSubmission, Property, StatusInfo, SubmissionHandle,
                              fault_class)
from broker.errors import InvalidCredentials, NotAuthorized, NotFound
from broker.persistence import queries

CoreFault = fault_class(CORE_NS)


def _env(ctx: Any) -> dict[str, Any]:
    return ctx.transport.req_env


def _api(ctx: Any) -> Any:
    return ctx.app.api


def core_operations(fault: type) -> dict[str, Any]:
    """IBrokerCore's operations, declared to throw ``fault``, for one service class: spyne binds an operation to
    the class it is declared in, and both services offer them (IBroker extends IBrokerCore)."""

    @rpc(BrokerSubmission, _returns=SubmissionHandle, _out_variable_name="return", _throws=fault)
    def submit(ctx, submission):
        """Validate and store a workflow; the handle is returned once the workflow is committed."""
        user = caller(_env(ctx))
        sub = submission or BrokerSubmission()
        fields = SubmissionFields(
            event_level=sub.eventLevel, experiment_id=sub.experimentId, request_id=sub.id, priority=sub.priority,
            publish_metadata_to=sub.publishMetadataTo, user=sub.user, content=sub.workflowContent,
            url=sub.workflowUrl, label=sub.workflowId, stored_name=sub.storedName, stored_version=sub.storedVersion,
            arguments=tuple((a.name, a.value or "") for a in sub.argument or ()))
        handle = submissions.submit(_api(ctx), user, fields)
        return SubmissionHandle(globalId=handle.global_id, id=handle.workflow_id, label=handle.label,
                                requestId=handle.request_id)

    @rpc(Integer32, Unicode, Array(Property, wrapped=False), _throws=fault)
    def updateNodeStatus(ctx, sessionId, status, output):
        """An elf's status, progress and output properties for its attempt (see broker.api.push)."""
        elf = _env(ctx).get(ELF_KEY)
        if elf is None:
            raise InvalidCredentials("updateNodeStatus authenticates with an elf session, not a user")
        if sessionId is not None and sessionId != elf.session_id:
            raise NotAuthorized(f"elf session {elf.session_id} may not report for session {sessionId}")
        push.apply_push(_api(ctx), elf, status, [(p.name, p.value) for p in output or ()])

    @rpc(Unicode, Unicode, _throws=fault)
    def archiveWorkflowsTo(ctx, archiveURI, configurationXml):
        """Archive the finished workflows an archive selection (schemas/archive.xsd) chooses (admin only)."""
        user = caller(_env(ctx))
        require_admin(user, "archiveWorkflowsTo")
        deletion.archive(_api(ctx), f"admin:{user.name}", archiveURI, configurationXml)

    @rpc(Integer32, _returns=Unicode, _out_variable_name="return", _throws=fault)
    def getDescriptorAsXml(ctx, id):
        """The description of a workflow exactly as submitted."""
        user = caller(_env(ctx))
        with _api(ctx).sessions() as s:
            return queries.visible_workflow(s, _id(id), scope_of(user)).descriptor

    @rpc(Integer32, _returns=Unicode, _out_variable_name="return", _throws=fault)
    def getWorkflowAsXml(ctx, id):
        """The workflow with every node's current state (schemas/workflow-state.xsd)."""
        from broker.statexml import workflow_xml
        from broker.persistence.models import User

        user = caller(_env(ctx))
        with _api(ctx).sessions() as s:
            workflow = queries.visible_workflow(s, _id(id), scope_of(user))
            owner = s.get(User, workflow.owner_id).name
            return workflow_xml(workflow, owner, queries.workflow_nodes(s, workflow.id), _node_counts(s, workflow.id))

    @rpc(Integer32, _returns=Unicode, _out_variable_name="return", _throws=fault)
    def getNodeAsXml(ctx, id):
        """One node (by database id) with everything inside it and every attempt of each
        (schemas/workflow-state.xsd)."""
        from broker.persistence.attempts import attempts_by_node
        from broker.statexml import node_xml

        user = caller(_env(ctx))
        with _api(ctx).sessions() as s:
            node, workflow = queries.visible_node(s, _id(id), scope_of(user))
            subtree = queries.node_subtree(s, node)
            return node_xml(workflow, node, subtree, attempts_by_node(s, [n.id for n in subtree]))

    @rpc(Unicode, _returns=AggregateSummary, _out_variable_name="return", _throws=fault)
    def getStateForUser(ctx, user):
        """A user's workflows and nodes by state (the caller's when null)."""
        me = caller(_env(ctx))
        name = named_user(me, user, "getStateForUser")
        api = _api(ctx)
        with api.sessions() as s:
            owner = queries.user_by_name(s, name)
        return wire.summary(api, owner.id, name, service=False)

    @rpc(Unicode, Integer64, _returns=Array(StatusInfo, wrapped=False), _out_variable_name="return",
         _throws=fault)
    def getStatusInfoForUser(ctx, user, lastId):
        """A user's events after lastId, oldest first, at most [api] page_size of them."""
        me = caller(_env(ctx))
        name = named_user(me, user, "getStatusInfoForUser")
        api = _api(ctx)
        with api.sessions() as s:
            owner = queries.user_by_name(s, name)
        return wire.events(api, lastId, owner.id)

    @rpc(Integer64, Integer64, _returns=Array(StatusInfo, wrapped=False), _out_variable_name="return",
         _throws=fault)
    def getStatusInfoForWorkflow(ctx, id, lastId):
        """One workflow's events after lastId, oldest first, at most [api] page_size of them: its owner's or an
        admin's (NotFound for anyone else, as for no such workflow). Not in the Java interface: a widening."""
        user = caller(_env(ctx))
        api = _api(ctx)
        with api.sessions() as s:
            workflow_id = queries.visible_workflow(s, _id(id), scope_of(user)).id
        return wire.events(api, lastId, None, workflow_id=workflow_id)

    @rpc(Unicode, Boolean, _returns=StatusInfo, _out_variable_name="return", _throws=fault)
    def getStatusInfoForId(ctx, globalId, estimate):
        """The current status of a workflow or node global id, with the id of the newest event about it; with
        ``estimate`` true (optional: clients made before it never send it, and never get the element), a
        running one's estimated end too."""
        user = caller(_env(ctx))
        api = _api(ctx)
        with api.connect() as connection:  # Core, no ORM session: the hottest read of the API
            status = queries.current_status(connection, globalId or "", scope_of(user), api.progress)
        return wire.status_info(status, api.estimates.get(api, status) if estimate else None)

    @rpc(Integer64, _returns=Array(StatusInfo, wrapped=False), _out_variable_name="return", _throws=fault)
    def getStatusInfo(ctx, lastId):
        """The caller's events after lastId (an admin's: every event), oldest first, one page."""
        user = caller(_env(ctx))
        return wire.events(_api(ctx), lastId, scope_of(user), every_event=user.admin)

    @rpc(Unicode, _throws=fault)
    def deleteAllForUser(ctx, user):
        """Delete a user's finished workflows (the caller's when null); running ones are skipped."""
        me = caller(_env(ctx))
        name = named_user(me, user, "deleteAllForUser")
        api = _api(ctx)
        with api.sessions() as s:
            owner = queries.user_by_name(s, name)
        actor = f"{'admin' if me.admin else 'user'}:{me.name}"
        deletion.delete_selection(api, actor, f"deleteAllForUser {name}", owner_id=owner.id)

    @rpc(Unicode, _throws=fault)
    def cancel(ctx, globalId):
        """Cancel one's own workflow, or one node of it (its dependants are skipped); returns once committed.
        An admin may cancel anyone's."""
        user = caller(_env(ctx))
        api = _api(ctx)
        workflow_id, node_ids = _own_target(api, user, globalId)
        if node_ids is None:
            api.engine.cancel(workflow_id, _actor(user))
        else:
            api.engine.cancel_nodes(node_ids, _actor(user))

    @rpc(Unicode, _throws=fault)
    def restart(ctx, globalId):
        """Give one's own workflow's (or a node's and its dependants') failed, cancelled, skipped nodes a fresh
        attempt. An admin may restart anyone's."""
        user = caller(_env(ctx))
        api = _api(ctx)
        workflow_id, node_ids = _own_target(api, user, globalId)
        api.engine.restart(workflow_id, _actor(user), None if node_ids is None else tuple(node_ids))

    found = dict(locals())  # in declaration order
    return {name: value for name, value in found.items() if getattr(value, "_is_rpc", False)}


#: IBrokerCore: what every user (and every remote elf) calls
BrokerCoreService = type(ServiceBase)("BrokerCoreService", (ServiceBase,), {"__module__": __name__,
                                                                           **core_operations(CoreFault)})


def _actor(user: Any) -> str:
    """Who acts, as the events name them: ``user:<name>`` (an owner) or ``admin:<name>``."""
    return f"{'admin' if user.admin else 'user'}:{user.name}"


def _own_target(api: Any, user: Any, global_id: str | None) -> tuple[int, list[int] | None]:
    """(workflow id, [node id] or None) of a global id the caller may act on; another user's workflow is
    "not found", in the very words of a workflow that does not exist."""
    from broker.ids import split_global_id
    from broker.persistence.control import resolve_target
    from broker.persistence.models import Workflow

    if not global_id:
        raise NotFound("no global id given")
    with api.sessions() as s:
        workflow_id, node_ids = resolve_target(s, global_id)
        scope = scope_of(user)
        if scope is not None and s.get(Workflow, workflow_id).owner_id != scope:
            raise NotFound(f"no workflow {split_global_id(global_id)[0]}")
    return workflow_id, node_ids


def _id(value: int | None) -> int:
    from broker.errors import NotFound


    from broker.errors import NotFound

    if value is None:
        raise NotFound("no id given")
    return value


def _node_counts(s: Any, workflow_id: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from broker.persistence.models import Node

    return dict(s.execute(select(Node.state, func.count()).where(Node.workflow_id == workflow_id, queries.counted())
                          .group_by(Node.state)).all())
