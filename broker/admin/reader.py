"""Reading archives back: list a target's archives, read one (validated against schemas/archive-record.xsd,
its bundle checked against the digest the document names), and take files out of a bundle.

An archive is a document ``<global id>.xml``; a bundle without its document is the leftover of an
interrupted write and is ignored. Documents are parsed with the hardened parser (no DOCTYPE, no entities):
an archive directory may be writable by others than the broker.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from typing import Any

from lxml import etree

from broker.admin.archive_record import CHUNK, NAMESPACE, SCHEMA_FILE, BundledFile, BundleInfo
from broker.admin.targets import Target
from broker.config import LimitSettings
from broker.description.xmlsafe import parse_document
from broker.description.xsd import Xsd
from broker.errors import BrokerError, DescriptionError, NotFound

_NS = f"{{{NAMESPACE}}}"
#: an archive document may be large (every event of a workflow); its texts stay within libxml2's own limit
_LIMITS = LimitSettings(max_document_bytes=4 * 1024**3, max_xml_depth=256, max_text_bytes=10 * 1000**2)
#: bytes of a document read to list it (its root element's attributes)
HEAD_BYTES = 64 * 1024


class ArchiveError(BrokerError):
    """Raised when an archive is damaged: not valid against its schema, or its bundle does not match."""


@dataclass(frozen=True, slots=True)
class Summary:
    """What a listing shows of one archive (the attributes of its root element)."""

    name: str
    global_id: str
    workflow_name: str
    owner: str
    state: str
    finished: str | None
    archived: str
    archived_by: str


@dataclass(frozen=True, slots=True)
class Archive:
    """One archive, read back and checked."""

    uri: str
    #: the root element's attributes (globalId, name, owner, state, submitted, finished, archived, ...)
    fields: dict[str, str]
    keep: dict[str, bool]
    descriptor: str | None
    #: the <workflowState> element as XML text (schemas/workflow-state.xsd)
    state_xml: str | None
    #: each event as a dict: id, seq, type, level, state, actor, time, node, message, properties (JSON text)
    events: list[dict[str, Any]] | None
    bundle: BundleInfo | None


#: the archive-record schema (it imports workflow-state.xsd from the same directory)
RECORD_XSD = Xsd(SCHEMA_FILE, NAMESPACE, "workflowArchive")


def record_schema() -> etree.XMLSchema:
    """The compiled archive-record schema."""
    return RECORD_XSD.schema()


def validate(tree: etree._ElementTree, where: str) -> None:
    """Raise ArchiveError unless the document is valid against schemas/archive-record.xsd."""
    entries, _ = RECORD_XSD.errors(tree, 1)
    if entries:
        raise ArchiveError(f"{where}:{entries[0].line}: not a valid archive document: {entries[0].message}")


def list_archives(target: Target) -> list[Summary]:
    """Every archive of a target, by global id."""
    out = []
    for name in target.names():
        with target.open(name) as fh:
            head = fh.read(HEAD_BYTES)
        attrs = _root_attributes(head, target.uri_of(name))
        out.append(Summary(name, attrs.get("globalId", ""), attrs.get("name", ""), attrs.get("owner", ""),
                           attrs.get("state", ""), attrs.get("finished"), attrs.get("archived", ""),
                           attrs.get("archivedBy", "")))
    return out


def _root_attributes(head: bytes, where: str) -> dict[str, str]:
    if b"<!DOCTYPE" in head:
        raise ArchiveError(f"{where}: a DOCTYPE is not allowed in an archive document")
    parser = etree.XMLPullParser(events=("start",), resolve_entities=False, load_dtd=False, no_network=True)
    try:
        parser.feed(head)
        for _, element in parser.read_events():
            if element.tag != f"{_NS}workflowArchive":
                break
            return {k: v for k, v in element.attrib.items()}
    except etree.XMLSyntaxError as exc:
        raise ArchiveError(f"{where}: not an archive document: {exc}") from None
    raise ArchiveError(f"{where}: not an archive document (no <workflowArchive> root in namespace {NAMESPACE})")


def read_archive(target: Target, name: str, *, check_bundle: bool = True) -> Archive:
    """Read, validate and (``check_bundle``) verify the bundle of archive ``name``. Raises NotFound, ArchiveError."""
    where = target.uri_of(name)
    with target.open(name) as fh:
        data = fh.read()
    try:
        tree = parse_document(data, _LIMITS, filename=where)
    except DescriptionError as exc:
        raise ArchiveError(f"not a readable archive document: {exc}") from None
    validate(tree, where)
    root = tree.getroot()
    keep_el = root.find(f"{_NS}keep")
    keep = {k: keep_el.get(k) in ("true", "1") for k in ("descriptor", "state", "events", "outputs")}
    descriptor_el = root.find(f"{_NS}descriptor")
    descriptor = None
    if descriptor_el is not None:
        parts = descriptor_el.findall(f"{_NS}part")
        descriptor = "".join(part.text or "" for part in parts) if parts else (descriptor_el.text or "")
        if hashlib.sha256(descriptor.encode("utf-8")).hexdigest() != descriptor_el.get("sha256"):
            raise ArchiveError(f"{where}: the descriptor does not match its SHA-256")
    state_el = root.find(f"{_NS}state")
    state_xml = None if state_el is None else etree.tostring(state_el[0], encoding="unicode")
    events_el = root.find(f"{_NS}events")
    events = None if events_el is None else [_event(e) for e in events_el]
    bundle_el = root.find(f"{_NS}bundle")
    bundle = None
    if bundle_el is not None:
        bundle = BundleInfo(bundle_el.get("name"), int(bundle_el.get("bytes")), bundle_el.get("sha256"), tuple(
            BundledFile(f.get("path"), f.get("node"), int(f.get("attempt")), f.get("stream"), int(f.get("bytes")),
                        f.get("sha256"), f.get("truncated") in ("true", "1")) for f in bundle_el))
        if check_bundle:
            verify_bundle(target, bundle)
    return Archive(where, dict(root.attrib), keep, descriptor, state_xml, events, bundle)


def _event(element: etree._Element) -> dict[str, Any]:
    message = element.find(f"{_NS}message")
    return {**dict(element.attrib), "message": None if message is None else (message.text or ""),
            "properties": {p.get("name"): p.text or "" for p in element.iterfind(f"{_NS}property")}}


def verify_bundle(target: Target, bundle: BundleInfo) -> None:
    """Raise ArchiveError unless the bundle has the size and SHA-256 its document names."""
    digest, size = hashlib.sha256(), 0
    try:
        with target.open(bundle.name) as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except NotFound:
        raise ArchiveError(f"{target.uri_of(bundle.name)}: the bundle is missing") from None
    if size != bundle.bytes or digest.hexdigest() != bundle.sha256:
        raise ArchiveError(f"{target.uri_of(bundle.name)}: the bundle does not match its document "
                           f"({size} bytes, sha256 {digest.hexdigest()}; expected {bundle.bytes} bytes, sha256 "
                           f"{bundle.sha256})")


def bundled_file(target: Target, bundle: BundleInfo, path: str) -> bytes:
    """The content of one file of a bundle (``<node dir>/<attempt>/<stream>``). Raises NotFound."""
    if not any(f.path == path for f in bundle.files):
        raise NotFound(f"the bundle {bundle.name} has no file {path!r} (it has: "
                       f"{', '.join(f.path for f in bundle.files) or 'none'})")
    with target.open(bundle.name) as fh, tarfile.open(fileobj=fh, mode="r|gz") as tar:
        for member in tar:
            if member.name == path and member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                return extracted.read()
    raise ArchiveError(f"{target.uri_of(bundle.name)}: {path} is listed but not in the bundle")
