"""Pure decision rules of the engine: when a node may run, and how a group (sweep or member) ended.

These are functions of counters only, so they cost O(1) per call and are unit-tested on their own. The
writer's mirror keeps the counters up to date as parents end (see broker.persistence.mirror).

A *unit* is what a failure constraint counts: a plain parent is one unit; an expanded parameterized
parent counts each of its members as one unit (a barrier over all members, subject to tolerance).
"""

from __future__ import annotations

from enum import Enum

from broker.description.model import Requires
from broker.states import NodeState


class Decision(Enum):
    WAIT = "wait"
    READY = "ready"
    SKIP = "skip"


def decide(requires: Requires, *, unfinished: int, ok_units: int, bad_units: int, named_bad: bool) -> Decision:
    """Whether a waiting node can run now, must be skipped, or must keep waiting.

    ``unfinished`` counts parents not yet terminal; ``ok_units``/``bad_units`` count the units of the
    terminal ones; ``named_bad`` says whether a parent named in ``requires.parents`` ended without
    succeeding. A node always waits for every parent to end (it may read their outputs), but it is skipped
    as soon as its constraint can no longer be met.
    """
    if requires.parents is not None:
        if named_bad:
            return Decision.SKIP
    elif requires.tolerance is not None:
        if unfinished:
            # totals of unexpanded parameterized parents are unknown until they end: decide at the end
            return Decision.WAIT
        total = ok_units + bad_units
        if total and ok_units < requires.tolerance * total - 1e-9:
            return Decision.SKIP
        return Decision.READY
    elif bad_units:
        return Decision.SKIP
    return Decision.WAIT if unfinished else Decision.READY


#: parents named in a skip message before "(and N more)"
NAMED_IN_SKIP = 5


def skip_message(requires: Requires, *, ok_units: int, bad_units: int, failed: list[str]) -> str:
    """Why a node was skipped, for its message: with a tolerance, the numbers that decided it; else the
    parents (``failed``, their paths) that did not succeed."""
    if requires.parents is None and requires.tolerance is not None:
        total = ok_units + bad_units
        unit = "parent unit" if total == 1 else "parent units"
        return f"{ok_units} of {total} {unit} succeeded, {requires.tolerance * 100:g}% needed"
    more = len(failed) - NAMED_IN_SKIP
    shown = ", ".join(failed[:NAMED_IN_SKIP]) + (f" (and {more} more)" if more > 0 else "")
    if len(failed) == 1:
        return f"a required parent did not succeed: {shown}"
    return f"required parents did not succeed: {shown}"


def group_outcome(*, ok: int, bad: int, cancelled: int) -> NodeState:
    """How a sweep or member ended once all its children ended.

    Any failed or skipped child fails the group; otherwise any cancelled child cancels it.
    """
    if bad:
        return NodeState.FAILED
    if cancelled:
        return NodeState.CANCELLED
    return NodeState.SUCCEEDED


def is_ok(state: NodeState) -> bool:
    return state is NodeState.SUCCEEDED
