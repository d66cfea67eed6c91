"""The persistence tests' harness: the changes the scheduler sends for a bundle launch."""

from __future__ import annotations

from broker.actions import LaunchBundle, NodeRef, Work
from broker.persistence.changes import AfterIntents, Transition
from broker.states import NodeState


def intents(ids: dict[str, int], names: str, then: tuple) -> list:
    """What the scheduler sends for one bundle: an intent per member, then the bundle's launch."""
    out: list = [Transition(node_id=ids[n], to=NodeState.QUEUED, actor="submission", attempt=0,
                            new_attempt=True) for n in names]
    return [*out, AfterIntents(then, tuple((ids[n], 1) for n in names))]


def bundle(ids: dict[str, int], names: str) -> tuple:
    """The launch of those members as one bundle, as the store hands it to a worker."""
    refs = tuple(NodeRef(node_id=ids[n], workflow_id=1, workflow_global_id="g", path=n, spec_path=n, attempt=1)
                 for n in names)
    return ("worker", Work(LaunchBundle(refs), "monitoring"))
