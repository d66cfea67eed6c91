"""Dynamic spawn: a fragment a payload wrote (``@broker spawn FILE``), checked as a submission is, and how its
nodes are named.

A fragment is a ``<workflow>`` document (the same schema) whose nodes, sweeps included, depend only on each
other: a ``dependsOn`` naming a node outside it is the usual unknown-node problem. Profiles may be declared
and used; workflow-wide settings (resources, failure constraint, priority, event level, maxInFlight,
publishMetadataTo, parameters) belong to the workflow it joins and are refused. The nodes are added under the spawning
node: node paths ``<spawner>/<id>``, template paths ``<spawner template>@<spawner id>.<attempt>/<id>`` (the
``@`` mark keeps each spawn's templates apart: spawners inside sweep members share a template but spawn
different fragments, and a restarted spawner spawns anew).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from broker.config import Settings
from broker.description.load import check_description
from broker.description.model import AnyNode, WorkflowSpec, nodes_from_data, nodes_to_data, walk
from broker.errors import Problem

#: how many problems a failed spawn's message names (the rest are counted)
SHOWN_PROBLEMS = 10
_OWNER = re.compile(r"@([0-9]+)\.([0-9]+)(?=/)")


def prefix(template: str, node_id: int, attempt: int) -> str:
    """The template prefix of the nodes spawned by attempt ``attempt`` of node ``node_id``."""
    return f"{template}@{node_id}.{attempt}"


def owner(template: str) -> tuple[int, int] | None:
    """(spawner node id, attempt) of a spawned node's template; None for a template of the description."""
    found = None
    for found in _OWNER.finditer(template):
        pass
    return (int(found.group(1)), int(found.group(2))) if found is not None else None


def depth(template: str) -> int:
    """How many spawns deep a node of this template is (0: a node of the description)."""
    return template.count("@")


def templates(record: dict[str, Any], spawner_template: str, node_id: int) -> dict[str, AnyNode]:
    """Template path -> spec of every node a stored spawn record added (see :func:`record`)."""
    nodes = nodes_from_data(record["nodes"])
    return dict(walk(nodes, prefix(spawner_template, node_id, record["attempt"])))


def record(file: str, attempt: int, nodes: tuple[AnyNode, ...]) -> dict[str, Any]:
    """What the spawner's row keeps of a spawn: the file, the attempt that spawned it, the nodes' specs."""
    return {"file": file, "attempt": attempt, "nodes": nodes_to_data(nodes)}


def _workflow_wide(spec: WorkflowSpec, line: int, file: str) -> list[Problem]:
    defaults = WorkflowSpec(name=spec.name, nodes=spec.nodes)
    wide = [name for name in ("resources", "failure", "priority", "event_level", "max_in_flight",
                              "publish_metadata_to", "parameters") if getattr(spec, name) != getattr(defaults, name)]
    return [Problem(file, line, 0, f"a spawned fragment adds nodes only: workflow-wide {name.replace('_', ' ')} "
                                   "belongs to the workflow it joins") for name in wide]


def check_fragment(text: str, settings: Settings, file: str, spawn_depth: int) -> tuple[tuple[AnyNode, ...] | None,
                                                                                      list[Problem]]:
    """(nodes, []) of a valid fragment, else (None, every problem): the parser, schema, semantic checks and
    limits of a submission, the spawn depth (``spawn_depth``: how deep the spawner already is) and the
    fragment-only rules."""
    limits = settings.limits
    if spawn_depth + 1 > limits.max_spawn_depth:
        return None, [Problem(file, 1, 0, f"spawned {spawn_depth + 1} levels deep, limit {limits.max_spawn_depth} "
                                          "([limits] max_spawn_depth)")]
    checked = check_description(text.encode("utf-8"), settings, filename=file)
    if checked.spec is None:
        return None, list(checked.problems)
    problems = _workflow_wide(checked.spec, 1, file)
    return (None, problems) if problems else (checked.spec.nodes, [])


def accept(file: str, text: str | None, error: str | None, *, attempt: int, spawn_depth: int,
           settings: Settings) -> tuple[dict[str, Any] | None, str | None]:
    """(the spawn record to store with the node's result, None), or (None, why the node fails)."""
    if text is None:
        return None, f"the spawned fragment {file} could not be read: {error}"
    nodes, problems = check_fragment(text, settings, file, spawn_depth)
    if nodes is None:
        return None, failure_message(file, problems)
    return record(file, attempt, nodes), None


def failure_message(file: str, problems: Sequence[Problem]) -> str:
    """The spawning node's message when its fragment is refused: the problems at their lines."""
    shown = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
    return f"the spawned fragment {file} was refused: {shown}{more}"


__all__ = ["accept", "check_fragment", "depth", "failure_message", "owner", "prefix", "record", "templates"]
