"""WorkflowSpecs for persistence tests, built from the dataclasses (no XML parser involved)."""

from __future__ import annotations

from broker.description.model import NodeSpec, Param, Payload, SweepSpec, WorkflowSpec

PAYLOAD = Payload(type="sh", text="echo hello\n")

#: a small description, stored verbatim (its exact bytes matter, not its meaning here)
DESCRIPTOR = """<?xml version="1.0" encoding="UTF-8"?>
<!-- kept   exactly: spacing, comments, non-ASCII (é, 漢) -->
<workflow name="diamond"><node id="a"/></workflow>
"""


def node(node_id: str, *depends: str, priority: int = 0) -> NodeSpec:
    """An execute node depending on ``depends``."""
    return NodeSpec(id=node_id, payload=PAYLOAD, depends=depends, priority=priority)


def diamond(**options) -> WorkflowSpec:
    """a -> (b, sweep s) -> d: one root, a sweep with a body of two nodes, a join."""
    sweep = SweepSpec(id="s", params=(Param(name="x", source="list", values=("1", "2", "3")),),
                      body=(node("prep"), node("run", "prep")), depends=("a",))
    return WorkflowSpec(name="diamond", nodes=(node("a"), node("b", "a", priority=5), sweep, node("d", "b", "s")),
                        **options)


def flat(count: int) -> WorkflowSpec:
    """``count`` nodes in a chain: about one dependency per node."""
    nodes = tuple(node(f"n{i}", *((f"n{i - 1}",) if i else ())) for i in range(count))
    return WorkflowSpec(name="flat", nodes=nodes)
