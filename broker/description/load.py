"""The entry point of the description layer: bytes in, a checked WorkflowSpec (or every problem) out.

The pipeline is pure (nothing is stored, nothing is fetched; files are read only inside
``[description] include_dirs``)::

    parse_document (xmlsafe)  ->  validate_tree (schema)  ->  build_spec (build)  ->  check_spec (checks)

A document the hardened parser rejects stops there; so does one the XSD rejects (building needs a valid
tree). Otherwise the builder's and the checker's problems are reported together, sorted by line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from broker.config import Settings
from broker.description.build import build_spec
from broker.description.checks import check_spec, expanded_node_count
from broker.description.model import NodeSpec, SweepSpec, WorkflowSpec, walk
from broker.description.schema import validate_tree
from broker.description.xmlsafe import parse_document
from broker.errors import DescriptionError, Problem


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of checking one description: a spec when there are no problems."""

    spec: WorkflowSpec | None
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class SpecStats:
    """Sizes of a spec, as ``broker validate`` prints them."""

    #: execute nodes in the description (sweep bodies counted once)
    nodes: int
    #: sweeps in the description
    sweeps: int
    #: nodes after static expansion (the number checked against [limits] max_nodes)
    expanded: int


def _sorted(problems: list[Problem]) -> tuple[Problem, ...]:
    return tuple(sorted(problems, key=lambda p: (p.line, p.column)))


def check_description(source: bytes, settings: Settings, *, filename: str = "<string>") -> Checked:
    """Parse, validate, build and check a description, collecting every problem instead of raising."""
    try:
        tree = parse_document(source, settings.limits, filename=filename)
    except DescriptionError as exc:
        return Checked(None, _sorted(list(exc.problems)))
    problems = validate_tree(tree, filename=filename, source=source)
    if problems:
        return Checked(None, _sorted(problems))
    spec, problems = build_spec(tree, settings, filename=filename)
    problems += check_spec(spec, settings, filename=filename, workflow_line=tree.getroot().sourceline or 1)
    return Checked(None if problems else spec, _sorted(problems))


def load_description(source: bytes, settings: Settings, *, filename: str = "<string>") -> WorkflowSpec:
    """The checked spec of a description. Raises DescriptionError carrying every Problem, sorted by line."""
    checked = check_description(source, settings, filename=filename)
    if checked.spec is None:
        raise DescriptionError(checked.problems)
    return checked.spec


def read_description_file(path: str | os.PathLike[str], settings: Settings) -> bytes:
    """The bytes of a description file, reading at most one byte past ``[limits] max_document_bytes``.

    Raises OSError when the file cannot be read. A longer file comes back truncated to that length, which
    the parser then rejects as oversized without the whole file ever being in memory.
    """
    with open(path, "rb") as fh:
        return fh.read(settings.limits.max_document_bytes + 1)


def check_description_file(path: str | os.PathLike[str], settings: Settings) -> Checked:
    """:func:`check_description` of a file, named in problems as given. Raises OSError if unreadable."""
    return check_description(read_description_file(path, settings), settings, filename=str(path))


def load_description_file(path: str | os.PathLike[str], settings: Settings) -> WorkflowSpec:
    """:func:`load_description` of a file. Raises OSError if unreadable, DescriptionError if rejected."""
    return load_description(read_description_file(path, settings), settings, filename=str(path))


def spec_stats(spec: WorkflowSpec) -> SpecStats:
    """How many nodes and sweeps a spec has, and how many nodes it expands to statically."""
    nodes = sweeps = 0
    for _, node in walk(spec.nodes):
        if isinstance(node, NodeSpec):
            nodes += 1
        elif isinstance(node, SweepSpec):
            sweeps += 1
    return SpecStats(nodes=nodes, sweeps=sweeps, expanded=expanded_node_count(spec))


__all__ = [
    "Checked", "SpecStats", "check_description", "check_description_file", "load_description",
    "load_description_file", "read_description_file", "spec_stats",
]
