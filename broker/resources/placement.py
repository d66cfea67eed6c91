"""Host resolution: which host of the catalogue a node runs on, and why none can.

:func:`resolve` is a pure function the scheduler calls per node: the node's own hosts, else the workflow's
resources, else the catalogue's default host (else, for a node that requires tags, every host, the default
first); of those, the first that carries the node's tags and whose limits and options satisfy its scheduling
profile. When none does, the error says why for each.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.description.model import Scheduling
from broker.errors import ResourceError
from broker.resources.catalogue import BatchOptions, Catalogue, Host


def size_text(value: int) -> str:
    """A size as the catalogue would write it: the largest binary unit that divides it (8GiB, 1536MiB)."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}B"


def _seconds(value: float) -> str:
    return f"{value:g} s"


def unsatisfied(host: Host, scheduling: Scheduling) -> str | None:
    """Why ``host`` cannot run a node with this scheduling profile, or None when it can."""
    missing = [t for t in scheduling.tags if t not in host.tags]
    if missing:
        has = f"tags: {' '.join(host.tags)}" if host.tags else "no tags"
        return f"lacks tag{'s' if len(missing) > 1 else ''} {', '.join(repr(t) for t in missing)} ({has})"
    limits = host.limits
    nodes = scheduling.nodes or 1
    if nodes > 1 and not host.is_batch:
        return f"needs {nodes} nodes, a {host.launcher} host runs a node on one"
    for what, asked, most, show in (("nodes", scheduling.nodes, limits.nodes, str),
                                    ("cores", scheduling.cores, limits.cores, str),
                                    ("memory", scheduling.memory, limits.memory, size_text),
                                    ("walltime", scheduling.walltime, limits.walltime, _seconds)):
        if asked is not None and most is not None and asked > most:
            return f"needs {what} {show(asked)}, at most {show(most)} there"
    if not host.is_batch:
        if scheduling.queue is not None:
            return f"asks for queue '{scheduling.queue}', which only a batch host has"
        if scheduling.directives:
            return f"uses directive '{scheduling.directives[0][0]}', which only a batch host takes"
        return None
    batch = host.batch or BatchOptions()
    if scheduling.queue is not None and batch.queues and scheduling.queue not in batch.queues:
        return f"has no queue '{scheduling.queue}' (queues: {', '.join(batch.queues)})"
    for name, _ in scheduling.directives:
        if name not in batch.directives:
            allowed = ", ".join(batch.directives) if batch.directives else "none"
            return f"does not allow directive '{name}' (allowed: {allowed})"
    return None


def candidate_names(workflow_resources: Sequence[str], scheduling: Scheduling, catalogue: Catalogue) -> tuple[str, ...]:
    """The hosts a node may use, in order: its own, else its workflow's, else the catalogue's default.

    A node that requires tags and names no host may use any host (the default first): the tags choose.
    """
    named = tuple(scheduling.hosts) or tuple(workflow_resources)
    if named:
        return named
    if scheduling.tags:
        return (catalogue.default, *(n for n in catalogue.names() if n != catalogue.default))
    return (catalogue.default,)


def candidates(workflow_resources: Sequence[str], scheduling: Scheduling, catalogue: Catalogue) -> list[Host]:
    """Every host that can run the node, in preference order (unknown names raise ResourceError)."""
    hosts = [catalogue.get(name) for name in candidate_names(workflow_resources, scheduling, catalogue)]
    return [h for h in hosts if unsatisfied(h, scheduling) is None]


def resolve(workflow_resources: Sequence[str], scheduling: Scheduling, catalogue: Catalogue,
            node: str = "") -> Host:
    """The host a node runs on: the first candidate that satisfies its profile.

    Raises ResourceError (not retryable) naming each candidate and why it cannot run the node.
    """
    reasons = []
    for name in dict.fromkeys(candidate_names(workflow_resources, scheduling, catalogue)):
        host = catalogue.get(name)
        why = unsatisfied(host, scheduling)
        if why is None:
            return host
        reasons.append(f"{name} {why}")
    who = f"node '{node}'" if node else "the node"
    raise ResourceError(f"{who} cannot run on any host: " + "; ".join(reasons), retryable=False)


__all__ = ["candidate_names", "candidates", "resolve", "size_text", "unsatisfied"]
