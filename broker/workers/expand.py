"""The expand worker: resolves a ready parameterized node's values and builds its members' rows.

Values from upstream outputs are read from the database now, which is why expansion is lazy: they exist
only once the upstream node has run. The same limits as validation apply; an over-limit expansion fails
the node with a message naming the limit.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from broker.actions import Expand
from broker.description.expansion import expand
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
        sweep = plan.templates[ref.template]
        assert isinstance(sweep, SweepSpec)
        limits = self.ctx.settings.limits
        values: dict[str, Any] = {}
        for param in sweep.params:
            if param.source == "output":
                values[param.name] = self._upstream(ref.workflow_id, join_path(_scope(ref.path), param.from_node or ""),
                                                    param.from_property or "", ref.path, limits.max_values)
            else:
                values[param.name] = param.values or ()
        try:
            members = expand(sweep, values, _scope(ref.path), max_members=limits.max_members)
        except ValueError as exc:
            raise BrokerError(str(exc)) from None
        per_member = 1 + len(sweep.body)
        with self.ctx.session_factory() as s:
            existing = s.execute(select(func.count()).select_from(Node)
                                 .where(Node.workflow_id == ref.workflow_id)).scalar_one()
        if existing + per_member * len(members) > limits.max_nodes:
            raise LimitExceeded(f"parameterized node '{ref.path}': expanding {len(members)} members would bring the "
                                f"workflow to {existing + per_member * len(members)} nodes (limit {limits.max_nodes})")
        rows = []
        for m in members:
            nodes, edges = body_rows(sweep, ref.template, m.path)
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
