"""Building a description's ``<parameters>`` and its ``<fromArgument>`` sweep parameters (for the builder).

Each declaration's problems are reported at its line, and a default is checked exactly as an argument is at
submission (:func:`broker.description.arguments.parse_value`), so a default that validation accepts is
never refused when a workflow is submitted without that argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from lxml import etree

from broker.config import LimitSettings
from broker.description.arguments import parse_value
from broker.description.model import Param, ParameterSpec
from broker.description.schema import NAMESPACE
from broker.errors import BrokerError

_Q = f"{{{NAMESPACE}}}"
_TRUE = ("true", "1")  # xs:boolean's true forms
Report = Callable[[etree._Element, str], None]


def _texts(el: etree._Element, tag: str) -> list[str]:
    return [(c.text or "") for c in el if c.tag == _Q + tag]


def build_parameters(el: etree._Element, limits: LimitSettings, problem: Report) -> tuple[ParameterSpec, ...]:
    """The parameters a ``<parameters>`` element declares, in document order (a repeated name: the first)."""
    out: dict[str, ParameterSpec] = {}
    for child in el:
        name, kind = child.get("name", ""), child.get("type", "string").strip()
        who = f"parameter '{name}': "
        choices = tuple(_texts(child, "choice"))
        descriptions = [t.strip() for t in _texts(child, "description")]
        param = ParameterSpec(
            name=name, type=kind, default=child.get("default"), required=child.get("required", "false").strip() in _TRUE,
            multiple=child.get("list", "false").strip() in _TRUE, choices=choices,
            description=descriptions[0] if descriptions else None, line=child.sourceline or 0)
        if name in out:
            problem(child, f"duplicate parameter '{name}' (first declared at line {out[name].line})")
            continue
        if (kind == "one-of") != bool(choices):
            problem(child, who + ("a one-of parameter needs <choice> elements" if kind == "one-of"
                                  else f"<choice> elements need type 'one-of', not '{kind}'"))
        if len(set(choices)) != len(choices):
            problem(child, f"{who}a <choice> is repeated")
        if param.default is not None:
            if param.required:
                problem(child, f"{who}a required parameter has no default")
            elif kind == "file":
                # a default path would make the broker read a file nobody named at submission
                problem(child, f"{who}a file parameter has no default")
            else:
                try:
                    normal, _ = parse_value(param, param.default, limits)
                except BrokerError as exc:
                    problem(child, f"{who}default: {str(exc).removeprefix(f'argument {name!r} ')}")
                else:
                    param = dataclasses.replace(param, default=normal)
        out[name] = param
    return tuple(out.values())


def from_argument(el: etree._Element, name: str, who: str, line: int, declared: Mapping[str, ParameterSpec],
                  limits: LimitSettings, problem: Report) -> Param:
    """A sweep parameter fed by a workflow argument: its default's values until the submission binds it (None
    when it has no default: counted as one value, like an upstream output)."""
    source = el.get("name", "")
    param = declared.get(source)
    values = None
    if param is None:
        problem(el, f"{who}<fromArgument> names '{source}', which is not a declared workflow parameter")
    elif param.type == "file":
        problem(el, f"{who}<fromArgument> names file parameter '{source}' (a file is one value, not a list to "
                    "sweep over)")
    elif not param.required and param.default is None:
        problem(el, f"{who}<fromArgument> names parameter '{source}', which is neither required nor has a default "
                    "(the sweep would have no values)")
    elif param.default is not None:
        try:
            values = parse_value(param, param.default, limits)[1]
        except BrokerError:
            pass  # reported at the parameter
    return Param(name=name, source="argument", from_argument=source, values=values, line=line)


__all__ = ["build_parameters", "from_argument"]
