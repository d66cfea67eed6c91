"""Dynamic spawn in the writer's mirror: a node whose payload spawned a fragment becomes the group of its nodes.

When the spawning node's success is applied (the same transaction that records its result and the fragment),
its nodes are created under it (paths ``<spawner>/<id>``, waiting; those without parents become ready once
their rows exist, as a sweep's do) and the node turns into a group that runs until they have all ended, then
ends with :func:`broker.rules.group_outcome` of theirs: its dependants wait for its nodes, and for a
tolerance each of them counts as one unit. A restart of the spawning node itself discards what it spawned
(rows included) so that its next attempt spawns afresh.
"""

from __future__ import annotations

from typing import Any

from broker.description import spawn as fragments
from broker.description.model import nodes_from_data
from broker.events.types import EventType
from broker.ids import join_path
from broker.persistence import attempts
from broker.persistence.graph import MNode
from broker.states import NodeState


def pending(node: MNode) -> bool:
    """Whether ``node``'s current attempt spawned a fragment that is not applied yet."""
    return node.spawn is not None and node.members is None and node.spawn.get("attempt") == node.attempt


def spawn(mirror: Any, node: MNode, batch: Any, *, actor: str, message: str | None,
          fields: dict[str, Any]) -> list[MNode]:
    """Turn ``node`` (its attempt just succeeded) into the group of the nodes it spawned; returns them."""
    record = node.spawn
    assert record is not None
    wf = node.wf
    nodes = nodes_from_data(record["nodes"])
    prefix = fragments.prefix(node.template, node.id, record["attempt"])  # type: ignore[arg-type]
    wf.templates.update(fragments.templates(record, node.template, node.id))  # type: ignore[arg-type]
    cols = {**fields, "members": len(nodes), "spawn": record}
    old = node.state
    if old is NodeState.RUNNING:
        if message is not None:
            cols["message"] = message
        batch.update(node, cols)
    else:  # queued (ended between two polls) or staging out
        mirror._move(node, NodeState.RUNNING, batch, actor=actor, message=message, fields=cols)
    # its attempt ended well: the attempt's row closes as it would at a plain success (before it is a group)
    attempts.record(batch, node, NodeState.RUNNING, NodeState.SUCCEEDED, {**cols, "message": message}, False)
    wf.count(NodeState.RUNNING, -1)  # a group: it stops counting as work
    body = [MNode(None, wf, join_path(node.path, spec.id), f"{prefix}/{spec.id}", spec.kind, NodeState.WAITING,
                  priority=spec.priority, parent=node) for spec in nodes]
    position = {spec.id: i for i, spec in enumerate(nodes)}
    edges = tuple((position[dep], position[spec.id]) for spec in nodes for dep in spec.depends)
    for parent_pos, child_pos in edges:
        body[parent_pos].children.append(body[child_pos])
        body[child_pos].deps.append(body[parent_pos])
        body[child_pos].unfinished += 1
    node.members = node.pending = len(body)
    node.g_ok = node.g_bad = node.g_cancelled = 0
    node.inside = list(body)
    batch.create(None, body, edges)
    wf.nodes.extend(body)
    wf.total_nodes += len(body)
    wf.size += len(body)
    mirror.owner_nodes[wf.owner] += len(body)
    wf.count(NodeState.WAITING, len(body))
    batch.spawned.append((node, old))
    count = f"{len(body)} node" if len(body) == 1 else f"{len(body)} nodes"
    batch.event(wf, EventType.NODE_SPAWNED, actor=actor, node=node, message=f"spawned {count} from {record['file']}",
                properties={"nodes": len(body), "file": record["file"], "attempt": record["attempt"]})
    return body


def discard(mirror: Any, node: MNode, batch: Any) -> int:
    """Forget what ``node`` spawned (its rows go with this commit); it is a plain node again. Returns how many
    nodes went."""
    wf = node.wf
    gone: list[MNode] = []
    stack = list(node.inside)
    while stack:
        inner = stack.pop()
        gone.append(inner)
        stack.extend(inner.inside)
    ids = {id(n) for n in gone}
    for inner in gone:
        if inner.counted:
            wf.count(inner.state, -1)
        mirror.nodes.pop(inner.id, None)
        batch.deleted.append(inner.id)
    wf.nodes = [n for n in wf.nodes if id(n) not in ids]
    wf.total_nodes -= len(gone)
    size = sum(1 for n in gone if n.kind != "member")
    wf.size -= size
    mirror.owner_nodes[wf.owner] -= size
    node.inside = []
    node.members = node.spawn = None
    node.pending = node.g_ok = node.g_bad = node.g_cancelled = 0
    wf.count(node.state, 1)  # work again, in the state its group ended in
    batch.update(node, {"members": None, "spawn": None})
    return len(gone)
