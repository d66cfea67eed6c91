"""How many nodes a workflow will run, counted the way a run counts them: execute nodes only.

``broker validate``, ``broker run``/``resume`` and ``broker status`` must agree on one number. A run counts the
execute nodes it has stored, and a parameterized node not expanded yet as one (it expands lazily, when it is
ready). Before that, the number it will reach is known from the description: each sweep contributes its static
member count times the execute nodes of its body. A sweep whose values come from an upstream output
(``fromOutput``) is counted with one member: the real number is known only once that output exists, so such
sweeps are named wherever the count is shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.description.checks import static_member_count
from broker.description.model import AnyNode, SweepSpec, walk


@dataclass(frozen=True, slots=True)
class Planned:
    """The execute nodes a description (or one sweep of it) runs once everything has expanded."""

    #: execute nodes after expansion, each output-driven sweep counted with one member
    nodes: int
    #: template paths of the sweeps whose values come from upstream outputs (they may add or remove nodes)
    output_driven: tuple[str, ...] = ()

    def note(self) -> str:
        """``""``, or the clause saying which sweeps can change the count at run time."""
        if not self.output_driven:
            return ""
        names = ", ".join(f"'{p}'" for p in self.output_driven)
        one = len(self.output_driven) == 1
        return (f"counting one member of {'sweep' if one else 'sweeps'} {names}, whose values come from upstream "
                f"outputs: {'it' if one else 'they'} can add nodes at run time")

def execute_nodes(nodes: Iterable[AnyNode]) -> int:
    """Execute nodes in ``nodes`` after static expansion (sweep bodies times their static member count)."""
    # recursion depth is bounded by the sweep nesting, itself bounded by [limits] max_nesting
    total = 0
    for node in nodes:
        if isinstance(node, SweepSpec):
            total += static_member_count(node) * execute_nodes(node.body)
        else:
            total += 1
    return total


def output_driven(nodes: tuple[AnyNode, ...], prefix: str = "") -> tuple[str, ...]:
    """Template paths of the sweeps in ``nodes`` (bodies included) that take a value from an upstream output."""
    return tuple(path for path, node in walk(nodes, prefix)
                 if isinstance(node, SweepSpec) and any(p.source == "output" for p in node.params))


def planned(nodes: tuple[AnyNode, ...], prefix: str = "") -> Planned:
    """What ``nodes`` (a workflow's top level, or a sweep's body under template ``prefix``) will run."""
    return Planned(execute_nodes(nodes), output_driven(nodes, prefix))


def sweeps_by_template(nodes: tuple[AnyNode, ...]) -> dict[str, SweepSpec]:
    """Template path -> sweep, for every sweep of a description."""
    return {path: node for path, node in walk(nodes) if isinstance(node, SweepSpec)}
