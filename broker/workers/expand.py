"""The expand worker: resolves a ready parameterized node's values and builds its members' rows.

Values from upstream outputs are read from the database now, which is why expansion is lazy: they exist
only once the upstream node has run. The same limits as validation apply; an over-limit expansion fails
the node with a message naming the limit. Values, members and nesting are checked here; so is what the
expansion alone would add against ``max_nodes``, before any member is built. The workflow's and its
owner's stored nodes are checked by the writer (broker.persistence.quota), which sees every expansion in
commit order.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from broker.actions import Expand
from broker.description.checks import body_node_count
from broker.description.expansion import expand, member_count
from broker.description.model import SweepSpec
from broker.errors import BrokerError, LimitExceeded
from broker.ids import join_path
from broker.persistence.changes import Expansion, MemberRows
from broker.persistence.models import Node
from broker.workers.pool import Worker


def _scope(path: str) -> str:
    """The node path of the scope a node lives in: ``a[1]/b`` -> ``a[1]``; top level -> ``""``."""
    return path.rsplit("/", 1)[0] if "/" in path else ""


def body_rows(sweep: SweepSpec, template: str, member_path: str) -> tuple[tuple[tuple[str, str, str, int], ...],
                                                                              tuple[tuple[int, int], ...]]:
    """The rows and in-member edges of one member's body."""
    position = {child.id: i for i, child in enumerate(sweep.body)}
    nodes = tuple((join_path(member_path, child.id), join_path(template, child.id), child.kind, child.priority)
                  for child in sweep.body)
    edges = tuple((position[dep], position[child.id]) for child in sweep.body for dep in child.depends)
    return nodes, edges


class ExpandWorker(Worker):
    def expand(self, action: Expand) -> Expansion:
        ref = action.node
        plan = self.ctx.plans.get(ref.workflow_id)
        sweep = plan.templates[ref.spec_path]
        assert isinstance(sweep, SweepSpec)
        limits = self.ctx.settings.limits
        nesting = ref.spec_path.count("/") + 1  # every '/' of a sweep's template path is a sweep around it
        if nesting > limits.max_nesting:
            raise LimitExceeded(f"parameterized node '{ref.path}': sweeps nested {nesting} deep, limit "
                                f"{limits.max_nesting} ([limits] max_nesting)")
        values: dict[str, Any] = {}
        for param in sweep.params:
            if param.source == "output":
                values[param.name] = self._upstream(ref.workflow_id, join_path(_scope(ref.path), param.from_node or ""),
                                                    param.from_property or "", ref.path, limits.max_values)
            else:
                values[param.name] = param.values or ()
        count = member_count(sweep, {name: len(found) for name, found in values.items()})
        adding = count * body_node_count(sweep)
        if count <= limits.max_members and adding > limits.max_nodes:  # too many members: expand() says so
            raise LimitExceeded(f"parameterized node '{ref.path}': expanding {count:,} members would make more than "
                                f"{adding:,} nodes, limit {limits.max_nodes:,} ([limits] max_nodes)")
        try:
            members = expand(sweep, values, _scope(ref.path), max_members=limits.max_members)
        except ValueError as exc:
            raise BrokerError(str(exc)) from None
        rows = []
        for m in members:
            nodes, edges = body_rows(sweep, ref.spec_path, m.path)
            rows.append(MemberRows(index=m.index, path=m.path, bindings=m.bindings, nodes=nodes, edges=edges))
        return Expansion(node_id=ref.node_id, actor="submission", members=tuple(rows))

    def _upstream(self, workflow_id: int, path: str, prop: str, sweep_path: str, max_values: int) -> list[Any]:
        with self.ctx.session_factory() as s:
            outputs = s.execute(select(Node.outputs).where(Node.workflow_id == workflow_id, Node.path == path)
                                ).scalar_one_or_none()
        if not outputs or prop not in outputs:
            raise BrokerError(f"parameterized node '{sweep_path}': node '{path}' reported no output '{prop}'")
        value = outputs[prop]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if not isinstance(value, list):
            raise BrokerError(f"parameterized node '{sweep_path}': output '{prop}' of node '{path}' is not a JSON array")
        if len(value) > max_values:
            raise LimitExceeded(f"parameterized node '{sweep_path}': output '{prop}' of node '{path}' has "
                                f"{len(value)} values (limit {max_values})")
        return value

    HANDLERS = {Expand: expand}
