"""``Client`` (IBrokerCore at ``/broker``) and ``AdminClient`` (IBroker at ``/admin``: every core call plus the
admin ones), over a running ``broker serve`` or, with ``.local(db_url)``, an engine in this process."""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Self

from broker.client import errors, types
from broker.client.connection import Connection
from broker.client.workflow import Workflow

#: seconds a call may take before the client gives up (ConnectionFailed); submissions of big workflows take longest
CALL_TIMEOUT = 300.0


class Client:
    """A user's client of the broker's SOAP API.

    ``Client(url, user, password)`` talks to ``broker serve`` at ``url`` (``http://host:8080``, without the
    service path) with HTTP Basic authentication over one ``requests.Session``, so that connections are
    reused. The WSDL is read at the first call. Calls from several threads are serialized; open one client per
    thread to call in parallel. The password is kept only in the session's credentials: it is in no repr and
    no log line of the client. Use it as a context manager, or call :meth:`close`.
    """

    #: the service path on the broker
    PATH = "/broker"

    def __init__(self, url: str, user: str, password: str, *, timeout: float = CALL_TIMEOUT, verify: bool | str = True):
        """``verify``: check the server's TLS certificate (True), against a CA bundle file, or not (False)."""
        try:
            import requests
            from zeep.transports import Transport
        except ImportError as exc:  # the 'client' extra is not installed
            raise ImportError(f"broker.client needs zeep and requests: pip install 'workflow-broker[client]' "
                              f"({exc})") from None

        session = requests.Session()
        session.auth = (user, password)
        session.verify = verify
        address = url.rstrip("/") + self.PATH
        transport = Transport(session=session, timeout=timeout, operation_timeout=timeout)
        self._init(Connection(address + "?wsdl", address, transport), user)

    def _init(self, connection: Connection, user: str, closer: Any = None) -> None:
        self._connection = connection
        #: the user the calls are made as
        self.user = user
        self._closer = closer

    @classmethod
    def local(cls, db_url: str | None = None, *, config: str | os.PathLike[str] | None = None,
              workdir: str | os.PathLike[str] | None = None) -> Self:
        """A client of an engine run in this process on ``db_url`` (default: the configured or embedded
        database), with no server: see :mod:`broker.client.local` for what it does and its limits."""
        from broker.client.local import open_local

        return open_local(cls, db_url, config=config, workdir=workdir)

    @classmethod
    def _over(cls, connection: Connection, user: str, closer: Any = None) -> Self:
        client = cls.__new__(cls)
        client._init(connection, user, closer)
        return client

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._connection.address!r}, user={self.user!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (and stop a local engine: its running payloads go on, see ``local``)."""
        self._connection.close()
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def call(self, operation: str, *args: Any) -> Any:
        """Call an operation of the WSDL by name and return zeep's answer (for what has no method here)."""
        return self._connection.call(operation, *args)

    # -------------------------------------------------------------------------------------- workflows

    def submit(self, path_or_text: str | os.PathLike[str] | None = None, *, url: str | None = None,
               label: str | None = None, priority: int | None = None, event_level: str | None = None,
               experiment_id: str | None = None, publish_metadata_to: str | None = None,
               request_id: str | None = None, user: str | None = None, version: int | None = None,
               args: Mapping[str, Any] | None = None) -> Workflow:
        """Submit a workflow and return its handle once it is stored (durably).

        ``path_or_text``: a description file, or the description itself (text starting with ``<``); or give
        ``url`` for the broker to fetch it (within its ``[api] workflow_urls``). Each other argument that is
        not None overrides the description's (the ``BrokerSubmission`` fields): ``label`` (``workflowId``,
        unique per user), ``priority``, ``event_level`` (ERROR, INFO, STATUS, PROGRESS, DEBUG),
        ``experiment_id``, ``publish_metadata_to``, ``request_id`` (submitting the same id again returns the
        same workflow), ``user`` (whose it is: another user's needs the admin role).
        ``path_or_text`` may also name a stored workflow (``NAME`` or ``NAME@VERSION``, or ``version``; an
        existing file wins over a name); ``args`` are values for the workflow's parameters (a file
        parameter's value is the file's content; other values are sent as their text, booleans as
        true/false). Raises InvalidDescription (``problems``: each FILE:LINE:COL: message), InvalidArgument, LimitExceeded.
        """
        if (path_or_text is None) == (url is None):
            raise errors.InvalidArgument("submit needs a description (a file or its text) or a url, not both")
        stored = _stored_ref(path_or_text)
        if version is not None:
            if stored is None:
                raise errors.InvalidArgument("version needs the name of a stored workflow")
            stored = (stored[0], version)
        content = None if path_or_text is None or stored is not None else _description(path_or_text)
        fields = {"workflowContent": content, "workflowUrl": url, "workflowId": label, "priority": priority,
                  "eventLevel": event_level, "experimentId": experiment_id, "publishMetadataTo": publish_metadata_to,
                  "id": request_id, "user": user, "storedName": stored[0] if stored else None,
                  "storedVersion": stored[1] if stored else None,
                  "argument": [{"name": k, "value": _argument_text(v)} for k, v in (args or {}).items()] or None}
        handle = self.call("submit", {k: v for k, v in fields.items() if v is not None})
        return Workflow(self, handle.globalId, handle.id, handle.label, handle.requestId)

    def workflow(self, global_id: str) -> Workflow:
        """The handle of an existing workflow by its global id. Raises NotFound (also for another user's)."""
        found = self.status(global_id)
        if found.node_path is not None:
            raise errors.InvalidArgument(f"{global_id} is a node's global id, not a workflow's")
        return Workflow(self, found.workflow_global_id, found.workflow_id)

    def status(self, global_id: str) -> types.Status:
        """The current status of a workflow or node global id. Raises NotFound."""
        return types.status(self.call("getStatusInfoForId", global_id))

    def events(self, after: int = 0) -> Iterator[types.Event]:
        """The caller's events (an admin's: everyone's) with an id above ``after``, oldest first, until there
        are no more for now; pages by ``lastId`` as the iterator advances."""
        return self.pages("getStatusInfo", after)

    def pages(self, operation: str, after: int, *arguments: Any) -> Iterator[types.Event]:
        """The events an event-page ``operation`` gives (its ``arguments``, then ``lastId``) above ``after``,
        oldest first, one call per page as the iterator advances, until a page is empty."""
        last = after
        while True:
            page = self.call(operation, *arguments, last) or ()  # zeep shows an empty array as None
            if not page:
                return
            for info in page:
                last = max(last, info.eventId)
                yield types.event(info)

    def summary(self, user: str | None = None) -> types.Summary:
        """Workflows and nodes of a user (the caller's when None; another's needs the admin role) by state."""
        return types.summary(self.call("getStateForUser", user))

    def delete_finished(self, user: str | None = None) -> None:
        """Delete a user's finished workflows (the caller's when None); running ones are skipped."""
        self.call("deleteAllForUser", user)

    def archive(self, archive_uri: str, selection_xml: str) -> None:
        """Archive the finished workflows a selection (``schemas/archive.xsd``) chooses (admin role)."""
        self.call("archiveWorkflowsTo", archive_uri, selection_xml)


class AdminClient(Client):
    """An admin's client: IBroker at ``/admin``, every call of :class:`Client` plus operating the service.

    Every call needs the admin role (NotAuthorized otherwise). An admin sees and acts on every user's
    workflows, and its :meth:`events` are every event of the service.
    """

    PATH = "/admin"

    def users(self) -> list[types.UserInfo]:
        """Every user with their workflows by state."""
        return [types.user_info(info) for info in self.call("getUserInfo") or ()]

    def service_state(self) -> types.Summary:
        """The whole service: workflows and nodes by state, hosts, bus backlog, uptime, version."""
        return types.summary(self.call("getServiceState"))

    def delete(self, global_id: str) -> None:
        """Delete one finished workflow; a running one is refused (InvalidState)."""
        self.call("delete", global_id)

    def delete_all_completed(self) -> None:
        """Delete every finished workflow of every user."""
        self.call("deleteAllCompleted")

    def delete_all_before(self, when: dt.datetime) -> None:
        """Delete the workflows that finished before ``when`` (an aware datetime); running ones are skipped."""
        if when.tzinfo is None:
            raise errors.InvalidArgument("delete_all_before needs an aware datetime (with a time zone)")
        self.call("deleteAllBefore", int(when.timestamp() * 1000))


#: a stored workflow's name, optionally @VERSION (broker.persistence.stored.NAME_RE)
_STORED_RE = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.\-]{0,63})(?:@([0-9]{1,9}))?")


def _stored_ref(path_or_text: str | os.PathLike[str] | None) -> tuple[str, int | None] | None:
    """(name, version) when ``path_or_text`` names a stored workflow rather than an existing file."""
    if not isinstance(path_or_text, str) or os.path.exists(path_or_text):
        return None
    match = _STORED_RE.fullmatch(path_or_text)
    if match is None:
        return None
    return match.group(1), int(match.group(2)) if match.group(2) else None


def _argument_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_argument_text(v) for v in value)
    return str(value)


def _description(path_or_text: str | os.PathLike[str]) -> str:
    """The description's text: the text given, or the file's content."""
    if isinstance(path_or_text, str) and path_or_text.lstrip().startswith("<"):
        return path_or_text
    path = Path(path_or_text)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.InvalidArgument(f"{path}: cannot read the description: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise errors.InvalidArgument(f"{path}: the description is neither UTF-8 nor UTF-16") from None
