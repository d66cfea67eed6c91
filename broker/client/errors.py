"""The client's exceptions: every SOAP fault and transport failure becomes one of these, never a zeep exception.

The tree is part of the broker's own (each class derives from :class:`broker.errors.BrokerError`, and the
classes named like a broker error also derive from it, so ``except broker.errors.NotFound`` catches the
client's too)::

    ClientError                 root of everything the client raises on purpose
    ├── InvalidDescription      Client.InvalidDescription: ``problems`` holds each FILE:LINE:COL: message
    ├── NotFound                Client.NotFound: no such workflow or node, or another user's
    ├── NotAuthorized           Client.NotAuthorized: the operation or the object is not the caller's
    ├── InvalidCredentials      Client.InvalidCredentials: no or wrong user name or password (HTTP 401)
    ├── LimitExceeded           Client.LimitExceeded: a documented limit of the broker
    ├── InvalidState            Client.InvalidState: not now (e.g. deleting a running workflow)
    ├── InvalidArgument         Client.InvalidArgument: an argument has a wrong value
    ├── InvalidRequest          Client.InvalidRequest, MustUnderstand: the broker refused the envelope
    ├── ServerError             Server, Server.*: the broker failed or is busy (retryable)
    ├── ConnectionFailed        the broker could not be reached, or answered something that is not SOAP
    └── WaitTimeout             Workflow.wait: the workflow did not end in time (also a TimeoutError)

Each error carries the fault ``code`` (None for the last two) and the ``problems`` of the fault's
``<BrokerFault>`` detail (the message lines; for an invalid description, one per problem).
"""

from __future__ import annotations

from typing import Any

from broker import errors as broker_errors


class ClientError(broker_errors.BrokerError):
    """Raised for every failure the client reports: a SOAP fault, an unreachable broker, a timeout."""

    def __init__(self, message: str, *, code: str | None = None, problems: tuple[str, ...] = ()):
        super().__init__(message)
        #: the documented fault code (``Client.NotFound``), None when no fault came back
        self.code = code
        #: the problem lines of the fault's ``<BrokerFault>`` detail
        self.problems = problems


class InvalidDescription(ClientError):
    """Raised when the broker rejected a workflow description; ``problems`` lists each one."""


class NotFound(ClientError, broker_errors.NotFound):
    """Raised when a workflow or node does not exist, or belongs to another user."""


class NotAuthorized(ClientError, broker_errors.NotAuthorized):
    """Raised when the caller may not perform the operation (an admin one, or another user's name)."""


class InvalidCredentials(ClientError, broker_errors.InvalidCredentials):
    """Raised when the user name or password is wrong or missing."""


class LimitExceeded(ClientError, broker_errors.LimitExceeded):
    """Raised when a request exceeds one of the broker's documented limits."""


class InvalidState(ClientError, broker_errors.StateError):
    """Raised when the object is not in a state the operation applies to."""


class InvalidArgument(ClientError):
    """Raised when an argument has a value the broker does not accept."""


class InvalidRequest(ClientError):
    """Raised when the broker refused the request itself (malformed envelope, unknown operation)."""


class ServerError(ClientError):
    """Raised when the broker failed, or was too busy to answer (then trying again later may succeed)."""

    retryable = True


class ConnectionFailed(ClientError):
    """Raised when the broker cannot be reached or does not answer with SOAP."""

    retryable = True


class WaitTimeout(ClientError, TimeoutError):
    """Raised when :meth:`Workflow.wait` gives up; ``status`` is the last status seen."""

    def __init__(self, message: str, status: Any = None):
        super().__init__(message)
        self.status = status


#: documented fault code -> the error it becomes (codes under ``Server`` all become ServerError)
FAULT_ERRORS: dict[str, type[ClientError]] = {
    "Client.InvalidDescription": InvalidDescription,
    "Client.NotFound": NotFound,
    "Client.NotAuthorized": NotAuthorized,
    "Client.InvalidCredentials": InvalidCredentials,
    "Client.LimitExceeded": LimitExceeded,
    "Client.InvalidState": InvalidState,
    "Client.InvalidArgument": InvalidArgument,
    "Client.InvalidRequest": InvalidRequest,
    "MustUnderstand": InvalidRequest,
}


def fault_error(code: str | None, message: str, problems: tuple[str, ...] = ()) -> ClientError:
    """The error for a fault: ``code`` is the fault code with or without its namespace prefix."""
    bare = (code or "Server").rpartition("}")[2].rpartition(":")[2]
    cls = FAULT_ERRORS.get(bare)
    if cls is None:
        # Server, Server.NotImplemented, and any code a newer broker may add
        cls = InvalidRequest if bare.startswith("Client") else ServerError
    return cls(message or bare, code=bare, problems=problems)
