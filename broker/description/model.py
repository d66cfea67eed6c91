"""The workflow domain model: frozen dataclasses built from a validated description.

Profiles are already applied: every :class:`NodeSpec` carries its *effective* scheduling and execution
(profile first, then the node's inline block on top). Durations are float seconds, sizes integer bytes.
Payload references and parameter line files are already read (their content is in the spec), so a stored
spec never depends on files that may change after submission.

A spec is turned into JSON (:func:`to_json`) and back (:func:`from_json`) so that the database keeps the
normalised plan of a workflow next to its verbatim descriptor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Union

from broker.states import FailureConstraint

PAYLOAD_TYPES = ("sh", "bash", "python", "csh")


@dataclass(frozen=True, slots=True)
class Scheduling:
    """Where and with what a node runs. ``None`` / empty means "not specified" (host or site default)."""

    hosts: tuple[str, ...] = ()
    #: tags a host must all carry to run the node (hosts.xml tags="...")
    tags: tuple[str, ...] = ()
    queue: str | None = None
    nodes: int | None = None
    cores: int | None = None
    #: bytes
    memory: int | None = None
    #: seconds, passed to batch schedulers
    walltime: float | None = None
    account: str | None = None
    #: (name, value) pairs from the allowlist, in document order; value None for a flag
    directives: tuple[tuple[str, str | None], ...] = ()

    def merged(self, top: Scheduling) -> Scheduling:
        """This profile with ``top``'s specified fields on top (directives merge by name)."""
        directives = dict(self.directives)
        directives.update(dict(top.directives))
        return Scheduling(
            hosts=top.hosts or self.hosts,
            tags=top.tags or self.tags,
            queue=top.queue if top.queue is not None else self.queue,
            nodes=top.nodes if top.nodes is not None else self.nodes,
            cores=top.cores if top.cores is not None else self.cores,
            memory=top.memory if top.memory is not None else self.memory,
            walltime=top.walltime if top.walltime is not None else self.walltime,
            account=top.account if top.account is not None else self.account,
            directives=tuple(directives.items()),
        )


@dataclass(frozen=True, slots=True)
class Retry:
    """Automatic retries: attempt ``n + 1`` waits ``backoff * 2 ** (n - 1)`` seconds, at most ``max_backoff``."""

    count: int = 0
    #: seconds before the first retry
    backoff: float = 10.0
    #: seconds, the cap on the exponential backoff
    max_backoff: float = 600.0

    def delay(self, failed_attempt: int) -> float:
        """Seconds to wait after ``failed_attempt`` (1-based) failed, before the next attempt."""
        return min(self.max_backoff, self.backoff * 2 ** max(0, failed_attempt - 1))


@dataclass(frozen=True, slots=True)
class Execution:
    """How a payload runs."""

    #: (name, value) pairs; names never start with ``WB_`` (reserved for the broker)
    env: tuple[tuple[str, str], ...] = ()
    #: interpreter command overriding the payload type's default (``/bin/sh``, ``bash``, ``python3``, ``csh``)
    interpreter: str | None = None
    #: working directory: relative to the node's work directory, or absolute
    workdir: str | None = None
    retry: Retry | None = None
    #: seconds; the launcher kills the payload's process group past it
    timeout: float | None = None

    def merged(self, top: Execution) -> Execution:
        env = dict(self.env)
        env.update(dict(top.env))
        return Execution(
            env=tuple(env.items()),
            interpreter=top.interpreter if top.interpreter is not None else self.interpreter,
            workdir=top.workdir if top.workdir is not None else self.workdir,
            retry=top.retry if top.retry is not None else self.retry,
            timeout=top.timeout if top.timeout is not None else self.timeout,
        )


@dataclass(frozen=True, slots=True)
class Payload:
    #: one of PAYLOAD_TYPES
    type: str
    #: the script text (already read when the description used ``ref``)
    text: str
    #: the reference it was read from, for the record
    ref: str | None = None
    #: whether ``text`` is a sandboxed Jinja2 template over the parameters
    template: bool = False


@dataclass(frozen=True, slots=True)
class Stage:
    source: str
    target: str
    #: ``sha256:<hex>``, ``sha512:<hex>`` or ``md5:<hex>``
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class Requires:
    """Which parents must succeed: all (both None), the named ``parents``, or a ``tolerance`` fraction."""

    parents: tuple[str, ...] | None = None
    tolerance: float | None = None


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """An execute node: one payload run on one resource."""

    id: str
    payload: Payload
    #: line of the ``<node>`` element in the description (for messages)
    line: int = 0
    priority: int = 0
    depends: tuple[str, ...] = ()
    requires: Requires = Requires()
    scheduling: Scheduling = Scheduling()
    execution: Execution = Execution()
    stage_in: tuple[Stage, ...] = ()
    stage_out: tuple[Stage, ...] = ()
    #: declared output property names
    outputs: tuple[str, ...] = ()
    description: str | None = None

    kind = "node"


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter of a sweep. Exactly one source: static ``values``, an upstream ``from_node`` output, or a
    workflow argument (``from_argument``, bound at submission)."""

    name: str
    #: "list", "range", "lines", "output" or "argument"
    source: str
    #: the values, for every source but "output" (ranges and line files are resolved at validation; an
    #: argument's at submission, its default's until then, None when it has none)
    values: tuple[str, ...] | None = None
    from_node: str | None = None
    from_property: str | None = None
    from_argument: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """A parameterized node: expands, when ready, into members that each copy ``body``."""

    id: str
    params: tuple[Param, ...]
    body: tuple[AnyNode, ...]
    line: int = 0
    priority: int = 0
    #: "cross" (every combination, last parameter varying fastest) or "zip" (position by position)
    mode: str = "cross"
    #: members that may share one batch job
    bundle: int = 1
    depends: tuple[str, ...] = ()
    requires: Requires = Requires()
    description: str | None = None

    kind = "sweep"


AnyNode = Union[NodeSpec, SweepSpec]

#: the types a workflow parameter may declare
PARAMETER_TYPES = ("string", "int", "float", "bool", "one-of", "file")


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """A workflow parameter: a value given at submission (``--arg name=value``), checked against its type."""

    name: str
    #: one of PARAMETER_TYPES
    type: str = "string"
    #: the value when no argument is given (already checked against the type), None when there is none
    default: str | None = None
    required: bool = False
    #: a comma-separated list of values of ``type`` (numbers also ``FROM..TO[:STEP]``), for ``<fromArgument>``
    multiple: bool = False
    #: the allowed values of a ``one-of`` parameter
    choices: tuple[str, ...] = ()
    description: str | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    name: str
    nodes: tuple[AnyNode, ...]
    event_level: str = "STATUS"
    #: higher runs first
    priority: int = 0
    publish_metadata_to: str | None = None
    #: hosts that restrict (several) or pin (one) where nodes run, unless a node names its own
    resources: tuple[str, ...] = ()
    failure: FailureConstraint = FailureConstraint()
    #: most of this workflow's nodes in flight at once (None: only the broker-wide limits apply)
    max_in_flight: int | None = None
    description: str | None = None
    #: the declared parameters, in document order
    parameters: tuple[ParameterSpec, ...] = ()
    #: the arguments it was submitted with, every parameter bound ((name, value) in parameter order, list
    #: values as given); None until bound (broker.description.arguments.bind)
    arguments: tuple[tuple[str, str], ...] | None = None


def walk(nodes: tuple[AnyNode, ...], prefix: str = ""):
    """Yield ``(template_path, node)`` for every node and sweep, sweep bodies included (depth first).

    A template path is a node path without member indexes: ``sweep/step``.
    """
    for node in nodes:
        path = f"{prefix}/{node.id}" if prefix else node.id
        yield path, node
        if isinstance(node, SweepSpec):
            yield from walk(node.body, path)


# ------------------------------------------------------------------------------------------- JSON form

_CLASSES = {cls.__name__: cls for cls in
            (Scheduling, Retry, Execution, Payload, Stage, Requires, NodeSpec, Param, SweepSpec, WorkflowSpec,
             FailureConstraint, ParameterSpec)}


#: class -> (name, ((field name, default), ...)), for every class a spec is made of
_SHAPES: dict[type, tuple[str, tuple[tuple[str, Any], ...]]] = {
    cls: (name, tuple((f.name, f.default) for f in fields(cls))) for name, cls in _CLASSES.items()}


def _encode(obj: Any) -> Any:
    shape = _SHAPES.get(type(obj))
    if shape is not None:
        out: dict[str, Any] = {"@": shape[0]}
        for field_name, default in shape[1]:
            value = getattr(obj, field_name)
            if value is not default and value != default:
                out[field_name] = _encode(value)
        return out
    if type(obj) is tuple:
        return [_encode(v) for v in obj]
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        cls = _CLASSES[obj["@"]]
        return cls(**{k: _decode(v) for k, v in obj.items() if k != "@"})
    if isinstance(obj, list):
        return tuple(_decode(v) for v in obj)
    return obj


def to_json(spec: WorkflowSpec) -> str:
    """The spec as compact JSON (fields at their default are left out)."""
    return json.dumps(_encode(spec), separators=(",", ":"), ensure_ascii=False)


def from_json(text: str) -> WorkflowSpec:
    spec = _decode(json.loads(text))
    assert isinstance(spec, WorkflowSpec)
    return spec


def nodes_to_data(nodes: tuple[AnyNode, ...]) -> list[Any]:
    """Nodes in the JSON form of specs, as plain data (a spawned fragment's nodes, stored with its node)."""
    return _encode(nodes)


def nodes_from_data(data: list[Any]) -> tuple[AnyNode, ...]:
    """The nodes of :func:`nodes_to_data`'s data."""
    return _decode(data)


__all__ = [
    "AnyNode", "Execution", "NodeSpec", "Param", "PARAMETER_TYPES", "ParameterSpec", "Payload", "PAYLOAD_TYPES", "Requires", "Retry", "Scheduling",
    "Stage", "SweepSpec", "WorkflowSpec", "from_json", "nodes_from_data", "nodes_to_data", "to_json", "walk",
]
