"""The API's hottest call answered without spyne: ``getStatusInfoForId``.

Clients poll a workflow's status far more often than they call anything else. Through spyne that call
costs about 1 ms of Python per request holding the interpreter lock, 85% of it spyne's own parsing and
serialising, and the API's request threads queue on that lock. The edge has by then already parsed the
envelope and authenticated the caller (:mod:`broker.api.edge`), so here the one argument is read from that
tree, the same query as :meth:`broker.api.core.BrokerCoreService.getStatusInfoForId` is run, and the
answer spyne would write is written directly: same elements, order, namespaces and value formats (ISO
datetimes, Python ``repr`` of doubles), checked byte for byte against spyne's answers by
``tests/api/test_fastpath.py``. Errors are raised as the service raises them, and the edge turns them into
the same faults. ``[api] fast_status = false`` sends the call through spyne like every other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from broker.api.faults import xml_text as _text
from broker.api.identity import caller, scope_of
from broker.errors import BrokerError
from broker.persistence import queries

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
CORE_NS = "urn:workflow-broker:core:v1"
TYPES_NS = "urn:workflow-broker:types:v1"
OPERATION = "getStatusInfoForId"

_HEAD = ("<?xml version='1.0' encoding='UTF-8'?>\n"
         f'<soap11env:Envelope xmlns:soap11env="{SOAP11_ENV}" xmlns:tns="{CORE_NS}" xmlns:s0="{TYPES_NS}">'
         "<soap11env:Body><tns:getStatusInfoForIdResponse><tns:return>")
_TAIL = "</tns:return></tns:getStatusInfoForIdResponse></soap11env:Body></soap11env:Envelope>"
_CALL = f"{{{SOAP11_ENV}}}Body/{{{CORE_NS}}}{OPERATION}"
_ARGUMENT = f"{{{CORE_NS}}}globalId"
_ESTIMATE = f"{{{CORE_NS}}}estimate"
#: xs:boolean's lexical forms
_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}


def status_answer(status: queries.Status, estimate: Any = None) -> bytes:
    """The response envelope of one status (and its Estimate, if any), as spyne serialises a StatusInfo (None
    fields left out)."""
    fields = [
        ("eventId", str(status.last_event_id)),
        ("time", None if status.time is None else status.time.isoformat()),
        ("type", "NODE_STATE" if status.node_path else "WORKFLOW_STATE"),
        ("state", _text(status.state)),
        ("globalId", _text(status.global_id)),
        ("workflowId", str(status.workflow_id)),
        ("workflowGlobalId", _text(status.workflow_global_id)),
        ("nodePath", None if status.node_path is None else _text(status.node_path)),
        ("message", None if status.message is None else _text(status.message)),
        ("progress", None if status.progress is None else repr(float(status.progress))),
    ]
    inner = "".join(f"<s0:{name}>{value}</s0:{name}>" for name, value in fields if value is not None)
    if estimate is not None:
        inner += ("<s0:estimatedEnd>" + "".join(
            f"<s0:{name}>{value}</s0:{name}>" for name, value in (
                ("p10", estimate.p10.isoformat()), ("p50", estimate.p50.isoformat()),
                ("p90", estimate.p90.isoformat()), ("basis", str(min(estimate.basis, 2**31 - 1)))))
                  + "</s0:estimatedEnd>")
    return (_HEAD + inner + _TAIL).encode("utf-8")


class StatusReader:
    """The status query on one connection per request thread, kept open between calls.

    A pool checkout and return per call (a ping too, on PostgreSQL) was a quarter of the call's time. Each
    read ends its transaction, so the next one sees whatever has been committed since; a connection that
    failed is closed and the next call opens another. ``engine`` should be the reader's own (a pool of at
    least one connection per request thread), so the kept connections never starve the broker's pool.
    """

    def __init__(self, engine: Any, board: Any = None):
        self._engine = engine
        self._board = board
        self._local = threading.local()

    def status(self, global_id: str, owner_id: int | None) -> queries.Status:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._engine.connect()
        try:
            status = queries.current_status(connection, global_id, owner_id, self._board)
        except BrokerError:
            self._end(connection)  # not found: the connection is fine
            raise
        except BaseException:
            self._drop(connection)
            raise
        self._end(connection)
        return status

    def _end(self, connection: Any) -> None:
        """End the read's transaction; a connection that cannot is dropped (the next call opens another)."""
        try:
            connection.rollback()
        except Exception:
            self._drop(connection)

    def _drop(self, connection: Any) -> None:
        self._local.connection = None
        with contextlib.suppress(Exception):
            connection.close()


def status_handler(reader: StatusReader, api: Any = None) -> Callable[[Any, dict[str, Any]], bytes | None]:
    """The edge's handler of getStatusInfoForId: (parsed envelope, WSGI environ) -> response body, or None
    for a request it leaves to spyne (anything but exactly a globalId argument, for spyne's own faults).
    ``api``: the ApiContext whose estimate cache gives running targets their estimated end."""

    def answer(tree: Any, environ: dict[str, Any]) -> bytes | None:
        call = tree.find(_CALL)
        if call is None or len(call) not in (1, 2) or call[0].tag != _ARGUMENT or call[0].attrib:
            return None  # another namespace, other or more elements, xsi:nil...: spyne's rules apply
        wanted = False
        if len(call) == 2:
            flag = call[1]
            if flag.tag != _ESTIMATE or flag.attrib or len(flag) or (flag.text or "").strip() not in _BOOLEAN:
                return None
            wanted = _BOOLEAN[(flag.text or "").strip()]
        user = caller(environ)
        status = reader.status(call[0].text or "", scope_of(user))
        return status_answer(status, api.estimates.get(api, status) if wanted and api is not None else None)

    return answer
