"""Semantic checks across nodes that the XSD cannot express, run on a built spec before anything is stored.

Every problem is collected (the checks never stop at the first) and names the node by its template path
(``sweep/step``); its line is the node's, with column 0. Checked per scope (the top level, or one sweep's
body): path-safe ids (again after the XSD: never ``.``, ``..`` or ``-x``), duplicate ids, dependencies on
unknown nodes, on itself, twice, and cycles. Per sweep: duplicate parameters, parameters named like a
workflow parameter (an argument is in scope everywhere: one name, one meaning), ``fromOutput`` sources,
static zip lengths, members and nesting limits. For the workflow: the node count after static expansion.

Counts are computed arithmetically, never by materialising members: a sweep counts ``1 + members x (nodes of
its body)``, with members from :func:`~broker.description.expansion.member_count` over the static value
counts, a ``fromOutput`` parameter counting one value. Cycle search is iterative, for 100,000-node scopes.
"""

from __future__ import annotations

from collections.abc import Iterator

from broker.config import Settings
from broker.description.expansion import member_count
from broker.description.model import AnyNode, NodeSpec, Param, SweepSpec, WorkflowSpec
from broker.errors import Problem
from broker.events.routing import metadata_destination_problem
from broker.ids import NODE_ID_RE


def static_member_count(sweep: SweepSpec) -> int:
    """Members of ``sweep`` from its static values, a ``fromOutput`` parameter counting one value."""
    sizes = {p.name: (1 if p.values is None and p.source in ("output", "argument") else len(p.values or ()))
             for p in sweep.params}
    return member_count(sweep, sizes)


def expanded_node_count(spec: WorkflowSpec) -> int:
    """Nodes after static expansion: each node 1, each sweep 1 + members x (nodes of its body)."""
    return _scope_count(spec.nodes)


def body_node_count(sweep: SweepSpec) -> int:
    """Nodes one member of ``sweep`` adds, its nested sweeps expanded statically (what expansion is checked with)."""
    return _scope_count(sweep.body)


def _scope_count(nodes: tuple[AnyNode, ...]) -> int:
    # recursion depth is bounded by the sweep nesting, itself bounded by [limits] max_xml_depth
    total = 0
    for node in nodes:
        if isinstance(node, SweepSpec):
            total += 1 + static_member_count(node) * _scope_count(node.body)
        else:
            total += 1
    return total


def _scopes(spec: WorkflowSpec) -> Iterator[tuple[tuple[AnyNode, ...], str, SweepSpec | None, int]]:
    """Yield ``(nodes, path prefix, owning sweep or None, sweep nesting)`` for every scope, iteratively."""
    stack: list[tuple[tuple[AnyNode, ...], str, SweepSpec | None, int]] = [(spec.nodes, "", None, 0)]
    while stack:
        nodes, prefix, owner, nesting = stack.pop()
        yield nodes, prefix, owner, nesting
        for node in reversed(nodes):
            if isinstance(node, SweepSpec):
                stack.append((node.body, f"{prefix}{node.id}/", node, nesting + 1))


class _Checker:
    """Runs every cross-node check over one spec."""

    def __init__(self, settings: Settings, filename: str, workflow_line: int = 1):
        self.limits = settings.limits
        self.file = filename
        self.workflow_line = workflow_line
        self.problems: list[Problem] = []
        #: workflow parameter name -> its line
        self.arguments: dict[str, int] = {}

    def problem(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line or 1, 0, message))

    def run(self, spec: WorkflowSpec) -> list[Problem]:
        self.arguments = {p.name: p.line for p in spec.parameters}
        for nodes, prefix, owner, nesting in _scopes(spec):
            where = "at the top level" if owner is None else f"in the scope of sweep '{prefix[:-1]}'"
            siblings = self.ids(nodes, prefix, where)
            self.dependencies(nodes, prefix, siblings, where)
            self.cycles(nodes, prefix, siblings)
            for node in nodes:
                if isinstance(node, SweepSpec):
                    self.sweep(node, prefix, siblings, nesting + 1)
        total = expanded_node_count(spec)
        if total > self.limits.max_nodes:
            self.problem(self.workflow_line, f"workflow expands to {total} nodes, over the limit of "
                                             f"{self.limits.max_nodes} ([limits] max_nodes)")
        if spec.publish_metadata_to is not None and (why := metadata_destination_problem(spec.publish_metadata_to)):
            self.problem(self.workflow_line, why)
        return self.problems

    def ids(self, nodes: tuple[AnyNode, ...], prefix: str, where: str) -> dict[str, AnyNode]:
        siblings: dict[str, AnyNode] = {}
        for node in nodes:
            if not NODE_ID_RE.fullmatch(node.id):
                # the XSD says so too; this holds for specs built any other way (ids become directory names)
                self.problem(node.line, f"{node.kind} '{prefix}{node.id}': id '{node.id}' is not path-safe "
                                        "(letters, digits, '_', '.', '-'; not '.' or '..', not starting with "
                                        "'.' or '-')")
            first = siblings.get(node.id)
            if first is not None:
                self.problem(node.line, f"{node.kind} '{prefix}{node.id}': duplicate id {where} "
                                        f"(first used at line {first.line})")
            else:
                siblings[node.id] = node
        return siblings

    def dependencies(self, nodes: tuple[AnyNode, ...], prefix: str, siblings: dict[str, AnyNode],
                     where: str) -> None:
        for node in nodes:
            seen: set[str] = set()
            for dep in node.depends:
                who = f"{node.kind} '{prefix}{node.id}'"
                if dep in seen:
                    self.problem(node.line, f"{who}: depends on '{dep}' twice")
                    continue
                seen.add(dep)
                if dep == node.id:
                    self.problem(node.line, f"{who}: depends on itself")
                elif dep not in siblings:
                    self.problem(node.line, f"{who}: depends on '{dep}', but there is no node '{dep}' {where}")

    def cycles(self, nodes: tuple[AnyNode, ...], prefix: str, siblings: dict[str, AnyNode]) -> None:
        """Report one cycle per back edge into nodes not yet in a reported cycle (iterative DFS)."""
        state: dict[str, int] = {}  # absent: unseen, 1: on the DFS path, 2: done
        in_reported: set[str] = set()
        for start in siblings:
            if start in state:
                continue
            path = [start]
            iterators = [iter(siblings[start].depends)]
            state[start] = 1
            while path:
                dep = next(iterators[-1], None)
                if dep is None:
                    state[path.pop()] = 2
                    iterators.pop()
                    continue
                if dep not in siblings or dep == path[-1]:
                    continue  # unknown nodes and self-dependencies are reported on their own
                mark = state.get(dep)
                if mark is None:
                    state[dep] = 1
                    path.append(dep)
                    iterators.append(iter(siblings[dep].depends))
                elif mark == 1 and dep not in in_reported:
                    cycle = path[path.index(dep):]
                    in_reported.update(cycle)
                    self.report_cycle(cycle, prefix, siblings)

    def report_cycle(self, cycle: list[str], prefix: str, siblings: dict[str, AnyNode]) -> None:
        # start the cycle at its first node in the document, so the message does not depend on DFS order
        first = min(range(len(cycle)), key=lambda i: siblings[cycle[i]].line)
        ordered = cycle[first:] + cycle[:first]
        head = siblings[ordered[0]]
        self.problem(head.line, f"{head.kind} '{prefix}{head.id}': dependency cycle: "
                                f"{' -> '.join(ordered + [ordered[0]])}")

    def sweep(self, sweep: SweepSpec, prefix: str, siblings: dict[str, AnyNode], nesting: int) -> None:
        who = f"sweep '{prefix}{sweep.id}'"
        if nesting == self.limits.max_nesting + 1:
            self.problem(sweep.line, f"{who}: sweeps nested {nesting} deep, over the limit of "
                                     f"{self.limits.max_nesting} ([limits] max_nesting)")
        names: set[str] = set()
        for param in sweep.params:
            if param.name in names:
                self.problem(param.line, f"{who}: duplicate parameter '{param.name}'")
            names.add(param.name)
            if param.name in self.arguments:
                self.problem(param.line, f"{who}: parameter '{param.name}' has the name of the workflow parameter "
                                         f"declared at line {self.arguments[param.name]} (an argument is in scope "
                                         "in every sweep: rename one of them)")
            if param.source == "output":
                self.from_output(sweep, who, param, siblings)
        static = [p for p in sweep.params if p.values is not None]
        if sweep.mode == "zip" and len({len(p.values or ()) for p in static}) > 1:
            sizes = ", ".join(f"{p.name}={len(p.values or ())}" for p in static)
            self.problem(sweep.line, f"{who}: zip parameters have different lengths ({sizes})")
        members = static_member_count(sweep)
        if members > self.limits.max_members:
            self.problem(sweep.line, f"{who}: expands to {members} members, over the limit of "
                                     f"{self.limits.max_members} ([limits] max_members)")

    def from_output(self, sweep: SweepSpec, who: str, param: Param, siblings: dict[str, AnyNode]) -> None:
        source, prop = param.from_node, param.from_property
        what = f"{who}: parameter '{param.name}' reads output '{prop}' of '{source}'"
        if source not in sweep.depends:
            self.problem(param.line, f"{what}, which is not in the sweep's dependsOn")
            return
        node = siblings.get(source)
        if node is None:
            return  # the dangling dependsOn is reported already
        if not isinstance(node, NodeSpec):
            self.problem(param.line, f"{what}, which is a sweep (only nodes declare outputs)")
        elif prop not in node.outputs:
            self.problem(param.line, f"{what}, which declares no output '{prop}'")


def check_spec(spec: WorkflowSpec, settings: Settings, *, filename: str = "<string>",
               workflow_line: int = 1) -> list[Problem]:
    """Every cross-node problem of ``spec`` (an empty list when there is none)."""
    return _Checker(settings, filename, workflow_line).run(spec)


__all__ = ["body_node_count", "check_spec", "expanded_node_count", "static_member_count"]
