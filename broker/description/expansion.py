"""Expansion of parameterized nodes: a pure function from a sweep and its resolved values to its members.

It is used twice with the same limits: statically at validation (to count nodes, with unknown upstream
outputs counted as one member) and at run time, when a sweep becomes ready and its ``fromOutput``
parameters are known. Member ``i`` of sweep ``s`` has the path segment ``s[i]``; its body nodes are
``s[i]/<child id>``. Indexes follow the combination order: for ``cross``, the last parameter varies fastest
(like nested loops in declaration order); for ``zip``, position by position.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.description.model import AnyNode, SweepSpec
from broker.errors import LimitExceeded
from broker.ids import join_path, member_segment

#: prefix of every variable the broker puts in a payload's environment; parameters are WB_PARAM_<name>
ENV_PREFIX = "WB_"
PARAM_ENV_PREFIX = "WB_PARAM_"
#: workflow arguments are WB_ARG_<name>
ARG_ENV_PREFIX = "WB_ARG_"


@dataclass(frozen=True, slots=True)
class Member:
    """One member of an expanded sweep."""

    index: int
    #: the member's node path, e.g. ``outer[2]/inner[3]``
    path: str
    #: this sweep's parameter values for the member (name -> text), in parameter order
    bindings: tuple[tuple[str, str], ...]
    #: the body to instantiate under ``path``
    body: tuple[AnyNode, ...]


def value_text(value: Any) -> str:
    """How a value reaches a payload: strings as they are, anything else (numbers, lists...) as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def member_count(sweep: SweepSpec, sizes: Mapping[str, int]) -> int:
    """How many members ``sweep`` has when its parameters have ``sizes`` values (name -> count)."""
    counts = [sizes[p.name] for p in sweep.params]
    if sweep.mode == "zip":
        return min(counts) if counts else 0
    return math.prod(counts)


def expand(sweep: SweepSpec, values: Mapping[str, Sequence[Any]], prefix: str = "", *,
           max_members: int) -> tuple[Member, ...]:
    """The members of ``sweep`` at node path ``prefix`` given every parameter's values.

    Raises LimitExceeded (naming the sweep) when the members would exceed ``max_members``, and
    ValueError when ``zip`` parameters have different lengths, before building anything.
    """
    path = join_path(prefix, sweep.id)
    names = [p.name for p in sweep.params]
    columns = [[value_text(v) for v in values[name]] for name in names]
    if sweep.mode == "zip" and len({len(c) for c in columns}) > 1:
        sizes = ", ".join(f"{n}={len(c)}" for n, c in zip(names, columns))
        raise ValueError(f"parameterized node '{path}': zip parameters have different lengths ({sizes})")
    count = member_count(sweep, {n: len(c) for n, c in zip(names, columns)})
    if count > max_members:
        raise LimitExceeded(f"parameterized node '{path}' would expand to {count} members "
                            f"(limit {max_members})")
    combos = zip(*columns) if sweep.mode == "zip" else itertools.product(*columns)
    return tuple(
        Member(index=i, path=join_path(prefix, member_segment(sweep.id, i)),
               bindings=tuple(zip(names, combo)), body=sweep.body)
        for i, combo in enumerate(combos)
    )


def param_env(bindings: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Environment variables for parameter bindings (outer sweeps first, so inner names win)."""
    return {PARAM_ENV_PREFIX + name: value for name, value in bindings}
