"""Archive selections: the ``<archive>`` document (schemas/archive.xsd) read into a frozen Selection.

The document comes from an admin over the API or from a file, so it goes through the hardened parser of
descriptions (no DOCTYPE, no entities, size and depth limits), then lxml's XSD validator. Every problem
names the document and line::

    selection.xml:4:0: <state>: the value 'running' is not one of 'succeeded', 'failed', 'cancelled'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from lxml import etree

from broker.config import LimitSettings
from broker.description import schema as wf_schema
from broker.description.xmlsafe import parse_document
from broker.description.xsd import Xsd
from broker.errors import ConfigError, DescriptionError, Problem

NAMESPACE = "urn:workflow-broker:archive:1"
SCHEMA_FILE = "archive.xsd"
#: what a selection may weigh: a long list of ids, never a workflow's size
_LIMITS = LimitSettings(max_document_bytes=8 * 1024**2, max_xml_depth=8, max_text_bytes=4096)
_NS = f"{{{NAMESPACE}}}"


class SelectionError(ConfigError):
    """Raised when an archive selection is rejected; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        super().__init__("invalid archive selection: " + "; ".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Keep:
    """Which parts of a workflow its archive keeps."""

    descriptor: bool = True
    state: bool = True
    events: bool = True
    #: the nodes' stdout and stderr files, in the bundle
    outputs: bool = True


@dataclass(frozen=True, slots=True)
class Selection:
    """Which finished workflows to archive (every criterion given must match), what to keep, and whether
    to delete them once archived."""

    users: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    finished_before: dt.datetime | None = None
    #: global ids (wf-...) or database ids (digits)
    ids: tuple[str, ...] = ()
    keep: Keep = Keep()
    delete_after: bool = False

    def describe(self) -> str:
        """The selection in one line, for messages and events."""
        parts = []
        if self.users:
            parts.append("user " + " or ".join(self.users))
        if self.states:
            parts.append("state " + " or ".join(self.states))
        if self.finished_before is not None:
            parts.append(f"finished before {self.finished_before.isoformat()}")
        if self.ids:
            parts.append(f"{len(self.ids)} named workflow(s)")
        return ", ".join(parts) or "every finished workflow"


#: the selection schema (its root element is <archive>)
SELECTION_XSD = Xsd(SCHEMA_FILE, NAMESPACE, "archive")


def _validate(tree: etree._ElementTree, filename: str) -> list[Problem]:
    wrong_root = SELECTION_XSD.root_problem(tree, filename)
    if wrong_root is not None:
        return [wrong_root]
    return [Problem(filename, max(entry.line, 1), 0, wf_schema.readable(SELECTION_XSD.plain(entry.message)))
            for entry in SELECTION_XSD.errors(tree)[0]]


def _flag(element: etree._Element | None, name: str, default: bool) -> bool:
    value = None if element is None else element.get(name)
    return default if value is None else value.strip() in ("true", "1")


def parse_selection(source: bytes | str | None, *, filename: str = "<selection>") -> Selection:
    """A Selection from an ``<archive>`` document. Raises SelectionError naming every problem."""
    if source is None or not source.strip():
        raise SelectionError([Problem(filename, 1, 0, "no selection given: an <archive> document in namespace "
                                                      f"'{NAMESPACE}' (see schemas/archive.xsd)")])
    data = source.encode("utf-8") if isinstance(source, str) else source
    try:
        tree = parse_document(data, _LIMITS, filename=filename)
    except DescriptionError as exc:
        raise SelectionError(exc.problems) from None
    problems = _validate(tree, filename)
    if problems:
        raise SelectionError(problems)
    root = tree.getroot()
    select = root.find(f"{_NS}select")
    texts = {tag: tuple(dict.fromkeys((e.text or "").strip() for e in select.iterfind(f"{_NS}{tag}")))
             for tag in ("user", "state", "id")}
    before = select.find(f"{_NS}finishedBefore")
    finished_before = None
    if before is not None:
        text = before.text.strip()
        try:
            finished_before = dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
        except ValueError:
            raise SelectionError([Problem(filename, before.sourceline or 1, 0,
                                          f"<finishedBefore>: {text!r} is not a usable time")]) from None
    keep = root.find(f"{_NS}keep")
    return Selection(users=texts["user"], states=texts["state"], finished_before=finished_before, ids=texts["id"],
                     keep=Keep(_flag(keep, "descriptor", True), _flag(keep, "state", True),
                               _flag(keep, "events", True), _flag(keep, "outputs", True)),
                     delete_after=_flag(root, "deleteAfter", False))
