"""Workflow arguments: values for a description's declared ``<parameters>``, checked and bound at submission.

A value is text. Its parameter's type decides what text is accepted and how it is normalised:

=========  ===========================================================================================
string     any text without a NUL character
int        a decimal integer, ``-9223372036854775808`` to ``9223372036854775807`` (leading ``+`` and
           zeros dropped)
float      a finite decimal number (``1.5``, ``-2e3``), written back without exponent
bool       ``true``/``false`` (also ``yes``/``no``, ``1``/``0``, any case), normalised to ``true``/``false``
one-of     exactly one of the parameter's ``<choice>`` texts
file       at submission from the command line: the path of a readable local file, whose content (UTF-8)
           becomes the value; over SOAP the content itself (the server reads no file for a client)
=========  ===========================================================================================

A parameter with ``list="true"`` takes a comma-separated list of such values (``1,2,5``), and an int or
float one also a range ``FROM..TO`` or ``FROM..TO:STEP`` (inclusive, decimal arithmetic, as ``<range>``);
a ``<fromArgument>`` sweep parameter takes one value per item. Every value is at most ``[limits]
max_argument_bytes`` long and a list has at most ``[limits] max_values`` items.

:func:`bind` fills a spec's ``arguments`` and the values of its ``<fromArgument>`` parameters. Values
reach payloads as environment variables (``WB_ARG_<name>``) and template variables only: never through a
shell's parser (see :mod:`broker.render`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal

from broker.config import LimitSettings
from broker.description.model import AnyNode, ParameterSpec, SweepSpec, WorkflowSpec
from broker.description.units import format_decimal, parse_decimal, range_values
from broker.errors import ArgumentError, LimitExceeded

_INT_RE = re.compile(r"[+-]?[0-9]{1,19}")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_RANGE_RE = re.compile(r"\s*([^.:\s][^:]*?)\s*\.\.\s*([^:]+?)\s*(?::\s*(.+?)\s*)?")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")
_INT_MIN, _INT_MAX = -2**63, 2**63 - 1
#: an argument name as given on the command line (the XSD's Name)
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: most arguments one submission may give (a description declares at most this many parameters)
MAX_ARGUMENTS = 256


def _scalar(param: ParameterSpec, text: str) -> str:
    """One value of ``param``'s type, normalised. Raises ValueError saying what was expected."""
    kind = param.type
    if kind in ("string", "file"):
        return text
    if kind == "int":
        if not _INT_RE.fullmatch(text.strip()):
            raise ValueError("is not an integer")
        value = int(text)
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError("is out of the 64-bit integer range")
        return str(value)
    if kind == "float":
        if not _FLOAT_RE.fullmatch(text.strip()):
            raise ValueError("is not a number")
        return format_decimal(Decimal(text.strip()))
    if kind == "bool":
        low = text.strip().lower()
        if low in _TRUE:
            return "true"
        if low in _FALSE:
            return "false"
        raise ValueError("is not a boolean (true or false)")
    if text not in param.choices:
        raise ValueError(f"is not one of {', '.join(repr(c) for c in param.choices)}")
    return text


def _show(text: str, size: int = 40) -> str:
    return repr(text if len(text) <= size else text[:size] + "...")


def parse_value(param: ParameterSpec, text: str, limits: LimitSettings) -> tuple[str, tuple[str, ...]]:
    """``(normalised text, items)`` of an argument for ``param``: items is ``(text,)`` for a single value.

    Raises ArgumentError naming the parameter, LimitExceeded for a value or list over its limit.
    """
    who = f"argument '{param.name}'"
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_argument_bytes:
        raise LimitExceeded(f"{who} is longer than {limits.max_argument_bytes} bytes ([limits] max_argument_bytes)")
    if "\0" in text:
        raise ArgumentError(f"{who} contains a NUL character")
    if not param.multiple:
        try:
            value = _scalar(param, text)
        except ValueError as exc:
            raise ArgumentError(f"{who} ({param.type}): {_show(text)} {exc}") from None
        return value, (value,)
    ranged = _RANGE_RE.fullmatch(text) if param.type in ("int", "float") else None
    if ranged is not None:
        try:
            start, stop = parse_decimal(ranged.group(1)), parse_decimal(ranged.group(2))
            step = parse_decimal(ranged.group(3) or "1")
            if param.type == "int" and any(v != v.to_integral_value() for v in (start, stop, step)):
                raise ValueError("has a bound or step that is not an integer")
            items = range_values(start, stop, step, max_values=limits.max_values)
        except ValueError as exc:
            raise ArgumentError(f"{who} (range of {param.type}): {_show(text)}: {exc}") from None
        return text.strip(), items
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if len(parts) > limits.max_values:
        raise LimitExceeded(f"{who} has {len(parts)} values, over the limit of {limits.max_values} "
                            "([limits] max_values)")
    items = []
    for i, part in enumerate(parts):
        try:
            items.append(_scalar(param, part))
        except ValueError as exc:
            raise ArgumentError(f"{who} (list of {param.type}): item {i + 1} {_show(part)} {exc}") from None
    if not items:
        raise ArgumentError(f"{who} (list of {param.type}): the list is empty")
    return ",".join(items), tuple(items)


def parse_assignments(texts: Iterable[str]) -> dict[str, str]:
    """``{name: value}`` of ``NAME=VALUE`` texts (``--arg``). Raises ArgumentError for a malformed or
    repeated one."""
    given: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not NAME_RE.fullmatch(name):
            raise ArgumentError(f"argument {_show(text)} is not NAME=VALUE (a name is a letter or '_' then "
                                "letters, digits or '_', at most 64)")
        if name in given:
            raise ArgumentError(f"argument '{name}' is given twice")
        if len(given) == MAX_ARGUMENTS:
            raise LimitExceeded(f"more than {MAX_ARGUMENTS} arguments")
        given[name] = value
    return given


def bind(spec: WorkflowSpec, given: Mapping[str, str], limits: LimitSettings, *,
         read_file: Callable[[str], str] | None = None) -> WorkflowSpec:
    """``spec`` with every parameter bound: the given argument, else its default; raises otherwise.

    ``read_file`` turns a ``file`` argument (a path) into its content (the command line); without it the
    value is the content already (SOAP). Raises ArgumentError for an unknown argument, a missing required
    one, a value of the wrong type or not among the choices, an unreadable file; LimitExceeded for a value
    over its limit. After binding, the spec's static expansion is checked against ``[limits] max_members``
    and ``max_nodes`` again, since ``<fromArgument>`` values may grow it.
    """
    from broker.description.checks import expanded_node_count, static_member_count

    declared = {p.name: p for p in spec.parameters}
    unknown = [name for name in given if name not in declared]
    if unknown:
        known = ", ".join(declared) or "none"
        raise ArgumentError(f"unknown argument '{unknown[0]}' (the workflow's parameters: {known})")
    arguments: list[tuple[str, str]] = []
    items: dict[str, tuple[str, ...]] = {}
    for param in spec.parameters:
        text = given.get(param.name)
        if text is None:
            if param.default is None:
                if param.required:
                    what = f": {param.description}" if param.description else ""
                    raise ArgumentError(f"missing required argument '{param.name}' ({param.type}{what})")
                continue  # optional without a default: unbound, as an unset variable
            text = param.default
        elif param.type == "file" and read_file is not None:
            text = read_file_argument(param.name, text, limits, read_file)
        value, items[param.name] = parse_value(param, text, limits)
        arguments.append((param.name, value))
    bound = dataclasses.replace(spec, arguments=tuple(arguments), nodes=_bind_nodes(spec.nodes, items))
    for node in _sweeps(bound.nodes):
        known = [p for p in node.params if p.values is not None]
        if node.mode == "zip" and len({len(p.values or ()) for p in known}) > 1:
            sizes = ", ".join(f"{p.name}={len(p.values or ())}" for p in known)
            raise ArgumentError(f"sweep '{node.id}': with these arguments its zip parameters have different "
                                f"lengths ({sizes})")
        members = static_member_count(node)
        if members > limits.max_members:
            raise LimitExceeded(f"sweep '{node.id}': these arguments expand it to {members} members, over the "
                                f"limit of {limits.max_members} ([limits] max_members)")
    total = expanded_node_count(bound)
    if total > limits.max_nodes:
        raise LimitExceeded(f"with these arguments the workflow expands to {total} nodes, over the limit of "
                            f"{limits.max_nodes} ([limits] max_nodes)")
    return bound


def read_file_argument(name: str, path: str, limits: LimitSettings, read: Callable[[str], str]) -> str:
    """The content of a file argument, through ``read`` (which raises OSError or UnicodeDecodeError)."""
    try:
        return read(path)
    except UnicodeDecodeError:
        raise ArgumentError(f"argument '{name}' (file): {_show(path, 400)} is not UTF-8 text") from None
    except OSError as exc:
        raise ArgumentError(f"argument '{name}' (file): cannot read {_show(path, 400)}: "
                            f"{exc.strerror or exc}") from None


def local_reader(limits: LimitSettings) -> Callable[[str], str]:
    """A ``read_file`` for :func:`bind` that reads a local file, at most ``max_argument_bytes`` of it."""
    def read(path: str) -> str:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_argument_bytes + 1)
        if len(data) > limits.max_argument_bytes:
            raise LimitExceeded(f"file {_show(path, 400)} is larger than {limits.max_argument_bytes} bytes "
                                "([limits] max_argument_bytes)")
        return data.decode("utf-8")
    return read


def _bind_nodes(nodes: tuple[AnyNode, ...], items: Mapping[str, tuple[str, ...]]) -> tuple[AnyNode, ...]:
    out: list[AnyNode] = []
    for node in nodes:
        if isinstance(node, SweepSpec):
            params = tuple(dataclasses.replace(p, values=items.get(p.from_argument or "", ()))
                           if p.source == "argument" else p for p in node.params)
            node = dataclasses.replace(node, params=params, body=_bind_nodes(node.body, items))
        out.append(node)
    return tuple(out)


def _sweeps(nodes: tuple[AnyNode, ...]) -> Iterable[SweepSpec]:
    for node in nodes:
        if isinstance(node, SweepSpec):
            yield node
            yield from _sweeps(node.body)


__all__ = ["MAX_ARGUMENTS", "NAME_RE", "bind", "local_reader", "parse_assignments", "parse_value",
           "read_file_argument"]
