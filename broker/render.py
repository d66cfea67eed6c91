"""Payload rendering: the script text and environment of one node attempt.

Parameter values reach a payload through its environment, always: ``WB_PARAM_<name>``. With
``template="true"`` the payload text is also a sandboxed Jinja2 template (:mod:`broker.templates`, imported
only then: Jinja2 adds about 70 ms to the start-up of a `broker run` that has no templates).

Environment variables the broker sets (they come after the execution profile's, so they always win, and a
parameter can never replace ``PATH`` or ``LD_PRELOAD`` because its name is prefixed):

====================  ================================================================================
``WB_WORKFLOW_ID``    the workflow's global id
``WB_NODE_PATH``      the node path, e.g. ``sweep[3]/step``
``WB_NODE_ID``        the node's global id, ``<workflow id>/<node path>``
``WB_ATTEMPT``        the attempt number, from 1
``WB_MEMBER_INDEX``   the index of the innermost sweep member the node belongs to (only inside sweeps)
``WB_WORKDIR``        the attempt's work directory (set by the launcher)
``WB_PARAM_<name>``   each parameter binding; inner sweeps win over outer ones with the same name
``WB_ARG_<name>``     each workflow argument bound at submission (a list argument as its normalised
                      comma-separated text)
====================  ================================================================================

In a template, arguments are variables by their name too, and ``args`` (name -> value); a sweep
parameter cannot share an argument's name (validation refuses it), so neither hides the other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from broker.description.expansion import ARG_ENV_PREFIX, ENV_PREFIX, PARAM_ENV_PREFIX
from broker.description.model import Payload
from broker.errors import RenderError

#: bytes: default largest rendered payload
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
#: seconds of template code one render may run
TIME_LIMIT = 2.0
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INDEX_RE = re.compile(r"\[(\d+)\]")


class NodeInfo(NamedTuple):
    """Who a payload is rendered for."""

    workflow_global_id: str
    #: node path, e.g. ``sweep[3]/step``
    node_path: str
    attempt: int
    #: the attempt's work directory, if already known (the launcher sets WB_WORKDIR anyway)
    workdir: str | None = None


class Rendered(NamedTuple):
    """A rendered payload: its text and the (name, value) pairs to add to its environment, in order."""

    text: str
    env: tuple[tuple[str, str], ...]


def check_template(payload: Payload, *, where: str = "payload") -> None:
    """Raise RenderError if ``payload`` is a template that does not compile (to refuse it at submission)."""
    if payload.template:
        from broker import templates

        templates.check(payload.type, payload.text, where)


def render(payload: Payload, *, node: NodeInfo, bindings: Sequence[tuple[str, str]] = (),
           env: Sequence[tuple[str, str]] = (), max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
           time_limit: float = TIME_LIMIT, arguments: Sequence[tuple[str, str]] = ()) -> Rendered:
    """The text and environment of one attempt of ``node``.

    ``bindings`` are the parameter values, outer sweeps first; ``env`` is the execution profile's
    environment; ``arguments`` the workflow's bound arguments. Raises RenderError, naming the node and the template line, when the template is invalid,
    uses an undefined name, breaks the sandbox or a limit, or a value cannot be quoted for the language.
    """
    where = f"node '{node.node_path}'"
    params = dict(bindings)
    for name, value in params.items():
        if "\0" in value:
            raise RenderError(f"{where}: the value of parameter '{name}' contains a NUL character")
    indexes = [int(i) for i in _INDEX_RE.findall(node.node_path)]
    node_id = f"{node.workflow_global_id}/{node.node_path}"
    pairs = {name: value for name, value in env if not name.startswith(ENV_PREFIX)}
    args = dict(arguments)
    pairs.update((ARG_ENV_PREFIX + name, value) for name, value in args.items())
    pairs.update((PARAM_ENV_PREFIX + name, value) for name, value in params.items())
    pairs.update(WB_WORKFLOW_ID=node.workflow_global_id, WB_NODE_PATH=node.node_path, WB_NODE_ID=node_id,
                 WB_ATTEMPT=str(node.attempt))
    if indexes:
        pairs["WB_MEMBER_INDEX"] = str(indexes[-1])
    if node.workdir is not None:
        pairs["WB_WORKDIR"] = node.workdir
    if not payload.template:
        return Rendered(payload.text, tuple(pairs.items()))

    context: dict[str, Any] = {k: v for k, v in args.items() if _IDENTIFIER_RE.fullmatch(k)}
    context.update((k, v) for k, v in params.items() if _IDENTIFIER_RE.fullmatch(k))
    context.update(params=params, args=args, workflow={"id": node.workflow_global_id},
                   node={"id": node_id, "path": node.node_path, "attempt": node.attempt,
                         "member_index": indexes[-1] if indexes else None, "indexes": indexes,
                         "workdir": node.workdir})
    from broker import templates

    text = templates.render(payload.type, payload.text, context, max_output_bytes, time_limit, where, params)
    return Rendered(text, tuple(pairs.items()))
