"""A submitted workflow, seen through a client: status, waiting, events, nodes, outputs, cancel and restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from broker.client import errors, types

#: seconds between the first status polls of wait(); it grows by BACKOFF while nothing changes
FIRST_POLL = 0.1
#: factor by which wait()'s poll interval grows while the status stays the same
BACKOFF = 1.5
#: seconds: the longest interval between two polls of wait() (the default ``max_poll``)
MAX_POLL = 5.0


class Calls(Protocol):
    """What a workflow handle needs of its client (``broker.client.Client``, which imports this module)."""

    def call(self, operation: str, *args: Any) -> Any: ...

    def status(self, global_id: str) -> types.Status: ...

    def pages(self, operation: str, after: int, *arguments: Any) -> Iterator[types.Event]: ...


class Workflow:
    """A handle on one workflow (``Client.submit``, ``Client.workflow``); every method asks the broker afresh."""

    __slots__ = ("client", "global_id", "id", "label", "request_id")

    def __init__(self, client: Calls, global_id: str, id: int, label: str | None = None,
                 request_id: str | None = None):
        #: the client the calls go through
        self.client = client
        #: ``wf-...``: the workflow's global id
        self.global_id = global_id
        #: the workflow's database id
        self.id = id
        #: the submitter's label (``workflowId``), if any
        self.label = label
        #: the submission's request id, if any
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"Workflow({self.global_id!r}, id={self.id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workflow) and other.global_id == self.global_id

    def __hash__(self) -> int:
        return hash(self.global_id)

    def _target(self, node: str | None) -> str:
        """The global id of the workflow, or of its node at path ``node``."""
        return self.global_id if node is None else f"{self.global_id}/{node}"

    def status(self, node: str | None = None) -> types.Status:
        """The current status of the workflow, or of its node at path ``node``."""
        return self.client.status(self._target(node))

    def wait(self, timeout: float | None = None, on_progress: Callable[[types.Status], None] | None = None, *,
             max_poll: float = MAX_POLL) -> types.Status:
        """Poll until the workflow ends; return its last status (whether it succeeded or not: see ``.state``).

        ``on_progress(status)`` is called with the first status and then with each one whose state, progress
        or message changed. Polls start at FIRST_POLL seconds apart and back off up to ``max_poll`` while
        nothing changes. Raises WaitTimeout (carrying the last status) after ``timeout`` seconds (None: no
        limit); the workflow goes on running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, seen = FIRST_POLL, None
        while True:
            current = self.status()
            key = (current.state, current.progress, current.message)
            if key != seen:
                seen, delay = key, FIRST_POLL
                if on_progress is not None:
                    on_progress(current)
            if current.done:
                return current
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise errors.WaitTimeout(f"workflow {self.global_id} still {current.state} after {timeout:g} s",
                                         current)
            time.sleep(delay if left is None else min(delay, left))  # a client's poll interval, by design
            delay = min(delay * BACKOFF, max_poll)

    def events(self, after: int = 0) -> Iterator[types.Event]:
        """This workflow's events with an id above ``after``, oldest first, until there are no more for now
        (``getStatusInfoForWorkflow``: one call per ``[api] page_size`` of its events, as the iterator
        advances)."""
        return self.client.pages("getStatusInfoForWorkflow", after, self.id)

    def nodes(self) -> list[types.Node]:
        """Every node of the workflow with its state and outputs, parents before their children."""
        return types.nodes(self.client.call("getWorkflowAsXml", self.id))

    def outputs(self, node: str) -> Mapping[str, Any]:
        """The output properties of the node at path ``node`` (``step``, ``sweep[2]/step``). Raises NotFound."""
        for found in self.nodes():
            if found.path == node:
                return found.outputs
        raise errors.NotFound(f"workflow {self.global_id} has no node {node!r}", code="Client.NotFound")

    def descriptor(self) -> str:
        """The description exactly as submitted."""
        return self.client.call("getDescriptorAsXml", self.id)

    def xml(self) -> str:
        """The workflow's state document (``schemas/workflow-state.xsd``)."""
        return self.client.call("getWorkflowAsXml", self.id)

    def cancel(self, node: str | None = None) -> None:
        """Cancel the workflow, or its node at path ``node`` (its dependants are skipped); returns once committed."""
        self.client.call("cancel", self._target(node))

    def restart(self, node: str | None = None) -> None:
        """Give the failed, cancelled and skipped nodes (of the workflow, or ``node`` and its dependants) a
        fresh attempt; returns once committed."""
        self.client.call("restart", self._target(node))
