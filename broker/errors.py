"""The broker's exception tree.

Every error the broker raises on purpose derives from :class:`BrokerError`. Each class says whether the
operation that raised it may succeed if simply tried again (``retryable``); the engine's retry logic and
the API's fault mapping read that flag, never the class name::

    BrokerError
    ├── ConfigError                 bad configuration file, key or environment variable
    │   └── ArgumentError           workflow arguments that do not match its parameters
    ├── DescriptionError            a workflow description was rejected (carries every Problem)
    ├── LimitExceeded               a documented limit was exceeded (also raised at run-time expansion)
    ├── NotFound                    no such workflow, node, user or event
    ├── NotAuthorized               the caller may not see or touch the object
    ├── InvalidCredentials          authentication failed
    ├── StateError                  an illegal state transition or a command that does not apply now
    ├── DatabaseError               the database is unreachable, locked or not migrated
    │   ├── BrokerLocked            another broker already holds this database
    │   └── LeaseLost               this broker's lease was taken over: it must write nothing more
    ├── RenderError                 a payload template could not be rendered safely
    └── ResourceError               a compute resource failed (retryable unless said otherwise)
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.printable import printable


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with an input, with where it was found.

    ``line`` and ``column`` are 1-based; ``column`` is 0 when the position within the line is unknown.
    """

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        # one line, whatever the file name and the text the message quotes
        return f"{printable(self.file)}:{self.line}:{self.column}: {printable(self.message)}"


class BrokerError(Exception):
    """Raised for every error the broker signals on purpose."""

    #: whether trying the same operation again later may succeed
    retryable: bool = False


class ConfigError(BrokerError):
    """Raised when a configuration file, key, value or ``BROKER_*`` variable is invalid."""


class ArgumentError(ConfigError):
    """Raised when the arguments given at submission do not match the workflow's declared parameters."""


class DescriptionError(BrokerError):
    """Raised when a workflow description is rejected; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]):
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else "invalid workflow description"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


class LimitExceeded(BrokerError):
    """Raised when an input or an expansion exceeds a documented limit."""


class NotFound(BrokerError):
    """Raised when a workflow, node, user or event does not exist (or is not visible to the caller)."""


class NotAuthorized(BrokerError):
    """Raised when the caller is authenticated but may not perform the operation."""


class InvalidCredentials(BrokerError):
    """Raised when authentication fails."""


class StateError(BrokerError):
    """Raised when a state transition is not in the transition table, or a command does not apply now."""


class DatabaseError(BrokerError):
    """Raised when the database cannot be used (unreachable, not migrated, wrong revision)."""

    retryable = True


class BrokerLocked(DatabaseError):
    """Raised when another broker process already holds the database."""

    retryable = False


class LeaseLost(DatabaseError):
    """Raised when this broker's lease on the database was taken by another broker (it stopped renewing it
    for longer than ``[engine] lease_timeout``): it must write nothing more and start nothing more."""

    retryable = False


class RenderError(BrokerError):
    """Raised when a payload template cannot be rendered safely (sandbox violation, size, quoting)."""


class ResourceError(BrokerError):
    """Raised when a compute resource (host, scheduler, file transfer) fails."""

    retryable = True

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable
