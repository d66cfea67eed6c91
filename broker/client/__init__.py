"""The Python client of the workflow broker: submit, follow and steer workflows from Python.

Over a running ``broker serve`` (SOAP, through zeep; ``pip install 'workflow-broker[client]'``)::

    from broker.client import Client

    with Client("http://broker.example:8080", "alice", password) as client:
        wf = client.submit("conf/examples/diamond.xml", priority=5)
        final = wf.wait(timeout=600, on_progress=lambda s: print(s.state, s.progress))
        print(final.state, wf.outputs("join"))
        for event in wf.events():
            print(event.id, event.type, event.node_path, event.state)

or over an engine in this process, without a server (``Client.local(db_url)``, see :mod:`broker.client.local`).
``AdminClient`` adds the admin calls. Results are frozen dataclasses (:mod:`broker.client.types`); failures are
:mod:`broker.client.errors` (root :class:`ClientError`), never zeep's exceptions.
"""

from __future__ import annotations

from broker.client.client import AdminClient, Client
from broker.client.errors import (ClientError, ConnectionFailed, InvalidArgument, InvalidCredentials,
                                  InvalidDescription, InvalidRequest, InvalidState, LimitExceeded, NotAuthorized,
                                  NotFound, ServerError, WaitTimeout)
from broker.client.types import Event, Node, Status, Summary, UserInfo
from broker.client.workflow import Workflow

__all__ = ["AdminClient", "Client", "ClientError", "ConnectionFailed", "Event", "InvalidArgument",
           "InvalidCredentials", "InvalidDescription", "InvalidRequest", "InvalidState", "LimitExceeded", "Node",
           "NotAuthorized", "NotFound", "ServerError", "Status", "Summary", "UserInfo", "WaitTimeout", "Workflow"]
