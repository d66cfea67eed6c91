"""The writer's in-memory mirror of every tracked (unfinished) workflow: node states and DAG counters.

Only the writer touches it, so it needs no locks. It is the authority the transition table is checked
against, and it derives the *consequences* of a change inside the same transaction as the change:
children that become ready or must be skipped (only the children of the node that ended are examined:
cost proportional to its out-degree), groups (sweeps and members) that end when their last child ends,
and the workflow's derived state. Every state change it makes is recorded in a :class:`WriteSet`, which the
store turns into SQL and events.

It can always be rebuilt from the database (:meth:`Mirror.load`), which is what happens at start-up.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from broker.errors import StateError
from broker.events.types import EventType
from broker.description import spawn as fragments
from broker.persistence import attempts, spawning
from broker.persistence.graph import MNode, MWorkflow
from broker.rules import Decision, decide, group_outcome, skip_message
from broker.states import TERMINAL, NodeState, WorkflowState, check_transition, derive_workflow_state


class Mirror:
    """Node states and counters of every tracked workflow. Mutated only through its methods."""

    def __init__(self) -> None:
        self.workflows: dict[int, MWorkflow] = {}
        self.nodes: dict[int, MNode] = {}
        #: owner -> the sizes of their tracked workflows added up ([limits] max_nodes_per_user)
        self.owner_nodes: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------------- loading

    def add_workflow(self, row: Any, owner: str, node_rows: Iterable[Any], edges: Iterable[tuple[int, int]],
                     batch: Any, spec: Any = None) -> MWorkflow:
        """Track a workflow from its rows (``spec``: its plan, decoded already); nodes that are already
        decidable are decided now."""
        wf = MWorkflow(row, owner, spec)
        self.workflows[wf.id] = wf
        by_id: dict[int, MNode] = {}
        parents: list[tuple[MNode, int]] = []
        for r in node_rows:
            node = MNode(r.id, wf, r.path, r.template, r.kind, NodeState(r.state), attempt=r.attempt, retries=r.retries,
                         priority=r.priority, members=r.members, member_index=r.member_index,
                         bindings=tuple(tuple(p) for p in r.bindings) if r.bindings else (), spawn=r.spawn)
            if r.spawn is not None:
                wf.templates.update(fragments.templates(r.spawn, r.template, r.id))
            by_id[node.id] = node
            if r.parent_id is not None:
                parents.append((node, r.parent_id))
        for node, parent_id in parents:
            node.parent = by_id[parent_id]
            node.parent.inside.append(node)
        for parent_id, child_id in edges:
            parent, child = by_id[parent_id], by_id[child_id]
            parent.children.append(child)
            child.deps.append(parent)
        nodes = list(by_id.values())
        wf.nodes = nodes
        wf.total_nodes = len(nodes)
        wf.size = sum(1 for node in nodes if node.kind != "member")
        self.owner_nodes[wf.owner] += wf.size
        self.nodes.update(by_id)
        # group counters bottom-up need children first: regroup every group once its children are known
        for node in nodes:
            if node.counted:
                wf.count(node.state, 1)
        for node in nodes:
            if node.is_group:
                self._regroup(node)
        for node in nodes:
            self._recount(node)
        for node in nodes:
            if node.state is NodeState.WAITING:
                self._decide(node, batch)
            elif node.state is NodeState.READY:
                batch.ready.append(node)
        self._complete_groups(nodes, batch)
        return wf

    def drop(self, wf: MWorkflow) -> None:
        """Stop tracking a finished workflow (its rows stay in the database)."""
        for node in wf.nodes:
            self.nodes.pop(node.id, None)  # type: ignore[arg-type]
        if self.workflows.pop(wf.id, None) is not None:
            self.owner_nodes[wf.owner] -= wf.size

    # ------------------------------------------------------------------------------------ transitions

    def transition(self, node: MNode, new: NodeState, batch: Any, *, actor: str, message: str | None = None,
                   fields: dict[str, Any] | None = None, new_attempt: bool = False) -> None:
        """Move ``node`` to ``new`` (checked), record it, and apply every consequence."""
        self._move(node, new, batch, actor=actor, message=message, fields=fields, new_attempt=new_attempt)
        if new in TERMINAL:
            self._propagate([node], batch)

    def _move(self, node: MNode, new: NodeState, batch: Any, *, actor: str, message: str | None = None,
              fields: dict[str, Any] | None = None, new_attempt: bool = False) -> None:
        """Check and record one state change, without its consequences for other nodes."""
        old = node.state
        check_transition(old, new, group=node.is_group)
        if node.counted:
            node.wf.count(old, -1)
            node.wf.count(new, 1)
        node.state = new
        cols: dict[str, Any] = dict(fields or ())
        cols["state"] = new.value
        if new_attempt:
            node.attempt += 1
            cols["attempt"] = node.attempt
        if new is NodeState.RUNNING:
            cols.setdefault("started_at", batch.now)
        if new in TERMINAL:
            cols["finished_at"] = batch.now
        elif old in TERMINAL:
            cols["finished_at"] = None
        if message is not None:
            cols["message"] = message
        batch.update(node, cols)
        attempts.record(batch, node, old, new, cols, new_attempt)
        props: dict[str, Any] = {"from": old.value, "attempt": node.attempt}
        batch.event(node.wf, EventType.NODE_STATE, actor=actor, node=node, state=new.value, message=message,
                    properties=props)
        batch.moved.append((node, old, new))
        if new is NodeState.READY:
            batch.ready.append(node)

    def _propagate(self, ended: list[MNode], batch: Any) -> None:
        """Tell the groups and dependants of nodes that just ended (iteratively: chains can be long)."""
        queue = deque(ended)
        while queue:
            node = queue.popleft()
            group = node.parent
            if group is not None and group.state is NodeState.RUNNING:
                group.pending -= 1
                self._tally(group, node.state, +1)
                if group.pending == 0:
                    self._end_group(group, batch, queue)
            ok, bad = node.units()
            for child in node.children:
                child.unfinished -= 1
                child.ok_units += ok
                child.bad_units += bad
                if bad and self._named(child, node):
                    child.named_bad = True
                if child.state is NodeState.WAITING:
                    if self._decide(child, batch, propagate=False):
                        queue.append(child)

    def _end_group(self, group: MNode, batch: Any, queue: deque[MNode]) -> None:
        outcome = group_outcome(ok=group.g_ok, bad=group.g_bad, cancelled=group.g_cancelled)
        message = f"{group.g_ok} succeeded, {group.g_bad} failed or skipped, {group.g_cancelled} cancelled"
        self._move(group, outcome, batch, actor="monitoring", message=message)
        queue.append(group)

    def _decide(self, node: MNode, batch: Any, *, propagate: bool = True) -> bool:
        """Decide a waiting node; returns True when it was skipped (it then needs propagating)."""
        requires = node.wf.templates[node.template].requires
        verdict = decide(requires, unfinished=node.unfinished, ok_units=node.ok_units, bad_units=node.bad_units,
                         named_bad=node.named_bad)
        if verdict is Decision.READY:
            self.transition(node, NodeState.READY, batch, actor="submission")
        elif verdict is Decision.SKIP:
            failed = [d.path for d in node.deps if d.state in TERMINAL and d.units()[1]]
            message = skip_message(requires, ok_units=node.ok_units, bad_units=node.bad_units, failed=failed)
            if propagate:
                self.transition(node, NodeState.SKIPPED, batch, actor="submission", message=message)
            else:
                self._move(node, NodeState.SKIPPED, batch, actor="submission", message=message)  # the caller propagates
                return True
        return False

    @staticmethod
    def _named(child: MNode, parent: MNode) -> bool:
        names = child.wf.templates[child.template].requires.parents
        return names is not None and parent.name in names

    @staticmethod
    def _tally(group: MNode, state: NodeState, sign: int) -> None:
        if state is NodeState.SUCCEEDED:
            group.g_ok += sign
        elif state is NodeState.CANCELLED:
            group.g_cancelled += sign
        else:
            group.g_bad += sign

    def _regroup(self, group: MNode) -> None:
        """Recompute a group's counters from its children's states."""
        group.pending = group.g_ok = group.g_bad = group.g_cancelled = 0
        for child in group.inside:
            if child.state in TERMINAL:
                self._tally(group, child.state, +1)
            else:
                group.pending += 1

    def _recount(self, node: MNode) -> None:
        """Recompute a node's dependency counters from its parents' states."""
        node.unfinished = node.ok_units = node.bad_units = 0
        node.named_bad = False
        for dep in node.deps:
            if dep.state in TERMINAL:
                ok, bad = dep.units()
                node.ok_units += ok
                node.bad_units += bad
                if bad and self._named(node, dep):
                    node.named_bad = True
            else:
                node.unfinished += 1

    def _complete_groups(self, nodes: Iterable[MNode], batch: Any) -> None:
        """End running groups whose children have all ended (innermost first)."""
        queue: deque[MNode] = deque()
        for node in sorted((n for n in nodes if n.is_group and n.state is NodeState.RUNNING and n.pending == 0),
                           key=lambda n: -n.path.count("/")):
            if node.state is NodeState.RUNNING and node.pending == 0:
                self._end_group(node, batch, queue)
        self._propagate(list(queue), batch)

    # -------------------------------------------------------------------------------------- expansion

    def expand(self, sweep: MNode, members: Iterable[Any], batch: Any, *, actor: str) -> list[MNode]:
        """Instantiate the members of a ready sweep (the rows are inserted by the store)."""
        if sweep.kind != "sweep" or sweep.state is not NodeState.READY or sweep.members is not None:
            raise StateError(f"node '{sweep.path}' is not a parameterized node ready to expand")
        wf = sweep.wf
        created: list[MNode] = []
        count = 0
        for m in members:
            member = MNode(None, wf, m.path, sweep.template, "member", NodeState.RUNNING, parent=sweep,
                           bindings=m.bindings, member_index=m.index)
            sweep.inside.append(member)
            body = [MNode(None, wf, path, template, kind, NodeState.WAITING, priority=prio, parent=member)
                    for path, template, kind, prio in m.nodes]
            member.inside = body
            for parent_pos, child_pos in m.edges:
                body[parent_pos].children.append(body[child_pos])
                body[child_pos].deps.append(body[parent_pos])
                body[child_pos].unfinished += 1
            member.pending = len(body)
            created.append(member)
            created.extend(body)
            batch.create(member, body, m.edges)
            count += 1
        self.transition(sweep, NodeState.RUNNING, batch, actor=actor, fields={"members": count})
        wf.count(NodeState.RUNNING, -1)  # an expanded sweep is a group: it stops counting as work
        sweep.members = count
        sweep.pending = count
        wf.nodes.extend(created)
        wf.total_nodes += len(created)
        added = len(created) - count  # the members are groups, not nodes
        wf.size += added
        self.owner_nodes[wf.owner] += added
        for node in created:
            if node.counted:
                wf.count(node.state, 1)
        members = f"{count} member" if count == 1 else f"{count} members"
        batch.event(wf, EventType.NODE_EXPANDED, actor=actor, node=sweep, message=f"expanded into {members}",
                    properties={"members": count})
        return created

    def start_created(self, sweep: MNode, created: list[MNode], batch: Any) -> None:
        """After their rows exist: register new nodes and make the ones without parents ready.

        Body nodes are created waiting and moved to ready here, so every node's readiness is an event.
        A sweep with no members ends at once.
        """
        for node in created:
            self.nodes[node.id] = node  # type: ignore[index]
        for node in created:
            if node.state is NodeState.WAITING and not node.deps:
                self.transition(node, NodeState.READY, batch, actor="submission")
        self._complete_groups([sweep], batch)

    # ---------------------------------------------------------------------------------- cancel/restart

    def cancel_nodes(self, targets: Iterable[MNode], batch: Any, *, actor: str) -> None:
        """Cancel nodes (groups: everything unfinished inside). In-flight ones go to ``batch.kill``."""
        stopped: list[MNode] = []
        for node in self._leaves(targets):
            if node.state in (NodeState.WAITING, NodeState.READY, NodeState.RETRY_WAIT, NodeState.STAGING_IN):
                self._move(node, NodeState.CANCELLED, batch, actor=actor, message=f"cancelled by {actor}")
                stopped.append(node)
            elif node.state in (NodeState.QUEUED, NodeState.RUNNING, NodeState.STAGING_OUT):
                batch.kill.append((node.id, node.attempt))
        # propagate only after every target is cancelled, so they end cancelled rather than skipped
        self._propagate(stopped, batch)

    def _leaves(self, targets: Iterable[MNode]) -> list[MNode]:
        """The work-carrying nodes under ``targets`` (a group stands for everything inside it)."""
        out: list[MNode] = []
        seen: set[int] = set()
        for target in targets:
            if not target.is_group:
                if id(target) not in seen:
                    seen.add(id(target))
                    out.append(target)
                continue
            stack = list(target.inside)
            while stack:
                node = stack.pop()
                if node.is_group:
                    stack.extend(node.inside)
                elif id(node) not in seen:
                    seen.add(id(node))
                    out.append(node)
        return out

    def restart(self, wf: MWorkflow, targets: Iterable[MNode] | None, batch: Any, *, actor: str) -> int:
        """Fresh attempts for failed, cancelled and skipped nodes (and their dependants); returns how many."""
        again = (NodeState.FAILED, NodeState.CANCELLED, NodeState.SKIPPED)
        targets = None if targets is None else list(targets)
        for target in targets or ():
            if target.kind == "node" and target.members is not None and target.state in again:
                spawning.discard(self, target, batch)  # it spawns afresh from its next attempt
        if targets is None:
            chosen = [n for n in wf.nodes if not n.is_group and n.state in again]
        else:
            chosen = [n for n in self._leaves(targets) if n.state in again]
            # dependants that were skipped or cancelled because of them come back too: those of the node
            # and those of every group around it, since those groups reopen with it
            queue, seen = deque(chosen), {id(n) for n in chosen}
            while queue:
                up: MNode | None = queue.popleft()
                while up is not None:
                    for leaf in self._leaves(up.children):
                        if id(leaf) not in seen and leaf.state in again:
                            seen.add(id(leaf))
                            chosen.append(leaf)
                            queue.append(leaf)
                    up = up.parent
        if not chosen:
            return 0
        for node in chosen:
            node.retries = 0
            self._move(node, NodeState.WAITING, batch, actor=actor, message=f"restarted by {actor}",
                       fields={"retries": 0, "exit_code": None, "retry_at": None})
        # reopen the groups around them, innermost first, then recount everything that may have changed
        groups: dict[int, MNode] = {}
        for node in chosen:
            g = node.parent
            while g is not None:
                groups[id(g)] = g
                g = g.parent
        for group in sorted(groups.values(), key=lambda g: -g.path.count("/")):
            if group.state in (NodeState.FAILED, NodeState.CANCELLED):
                self._move(group, NodeState.RUNNING, batch, actor=actor, message=f"reopened by a restart ({actor})")
            self._regroup(group)
        affected = {id(n): n for n in chosen}
        for node in chosen:
            for child in node.children:
                affected[id(child)] = child
        for group in groups.values():
            for child in group.children:
                affected[id(child)] = child
        for node in affected.values():
            self._recount(node)
        wf.cancel_requested = False
        batch.workflow_update(wf, {"cancel_requested": False, "finished_at": None})
        for node in chosen:
            if node.state is NodeState.WAITING:
                self._decide(node, batch)
        return len(chosen)

    # --------------------------------------------------------------------------------- workflow state

    def derive(self, wf: MWorkflow, batch: Any) -> WorkflowState | None:
        """Recompute the workflow's state; record and return it when it changed."""
        new = derive_workflow_state(wf.counts, wf.constraint, wf.cancel_requested, started=wf.started_at is not None)
        if new is wf.state:
            return None
        old, wf.state = wf.state, new
        cols: dict[str, Any] = {"state": new.value}
        if old is WorkflowState.ACCEPTED and wf.started_at is None:
            wf.started_at = batch.now
            cols["started_at"] = batch.now
        cols["finished_at"] = batch.now if new in (WorkflowState.SUCCEEDED, WorkflowState.FAILED,
                                                   WorkflowState.CANCELLED) else None
        batch.workflow_update(wf, cols)
        counts = {s.value: n for s, n in wf.counts.items() if n}
        batch.event(wf, EventType.WORKFLOW_STATE, actor="submission", state=new.value,
                    message=f"workflow {new.value}", properties={"from": old.value, "nodes": counts})
        return new

    def failed_so_far(self, wf: MWorkflow) -> bool:
        """Whether the workflow's failure constraint is already broken (for on_failure="stop")."""
        total = sum(wf.counts.values())
        bad = sum(n for s, n in wf.counts.items() if s in TERMINAL and s is not NodeState.SUCCEEDED)
        return not wf.constraint.allows(bad, total)
