"""Writing one workflow's archive: the document (schemas/archive-record.xsd) and the bundle of its outputs.

What the archive holds is read so that it is never newer than what a deletion checks: first the newest
event id of the workflow (``lastEventId``), then the workflow, its nodes and its events up to that id.
Every change to a workflow comes with an event, so a deletion that requires "no event after lastEventId"
(:func:`broker.persistence.queries.delete_finished`) never deletes a workflow that changed after its
archive was read.

Outputs are the ``stdout`` and ``stderr`` files of every attempt directory under the workflow's work
directories, opened without following symbolic links (a payload could have replaced its stdout with a link
to a file only the broker may read): anything that is not a regular file is left out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lxml import etree
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from broker import __version__
from broker.admin.selection import Keep
from broker.events.types import EventLevel
from broker.persistence import queries
from broker.persistence.models import Event, Node, User, Workflow
from broker.printable import xml_safe

NAMESPACE = "urn:workflow-broker:archive-record:1"
SCHEMA_FILE = "archive-record.xsd"
_Q = "{%s}%%s" % NAMESPACE
#: elements written one by one into the streamed document declare the default namespace themselves
_NSMAP = {None: NAMESPACE}
#: events read per query while writing a document
EVENT_PAGE = 2000
#: characters of a descriptor <part> (at most 4 MiB of UTF-8: well under libxml2's 10 MB text limit)
DESCRIPTOR_PART_CHARS = 1024 * 1024
#: bytes read per chunk while bundling a file
CHUNK = 1024 * 1024
#: the streams a bundle keeps of each attempt
STREAMS = ("stdout", "stderr")
_MEMBER_DIR = re.compile(r"@([0-9]+)")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the document of one workflow says, read from the database (events are streamed separately)."""

    workflow: Workflow
    owner: str
    #: the newest event of the workflow when it was read (0: none): the archive holds events up to it
    last_event_id: int
    event_count: int
    #: the <workflowState> of getWorkflowAsXml, when the state is kept
    state_xml: str | None


@dataclass(frozen=True, slots=True)
class BundledFile:
    """One member of a bundle."""

    path: str
    node: str
    attempt: int
    stream: str
    bytes: int
    sha256: str
    truncated: bool


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """A written bundle: its file name next to the document, size, digest and members."""

    name: str
    bytes: int
    sha256: str
    files: tuple[BundledFile, ...]


def read_snapshot(sessions: sessionmaker[Session], workflow_id: int, keep: Keep) -> Snapshot:
    """The workflow's fields, owner, last event id and (if kept) state XML. Raises NotFound."""
    from broker.persistence.attempts import attempts_of_workflow
    from broker.statexml import workflow_xml

    with sessions() as s:
        last = s.execute(select(func.max(Event.id)).where(Event.workflow_id == workflow_id)).scalar() or 0
        workflow = queries.visible_workflow(s, workflow_id, None)
        owner = s.execute(select(User.name).where(User.id == workflow.owner_id)).scalar_one()
        count = s.execute(select(func.count()).select_from(Event)
                          .where(Event.workflow_id == workflow_id, Event.id <= last)).scalar_one()
        state_xml = None
        if keep.state:
            counts = dict(s.execute(select(Node.state, func.count()).where(Node.workflow_id == workflow_id,
                                                                           queries.counted())
                                    .group_by(Node.state)).all())
            state_xml = workflow_xml(workflow, owner, queries.workflow_nodes(s, workflow_id), counts,
                                     attempts_of_workflow(s, workflow_id))
    return Snapshot(workflow, owner, last, count, state_xml)


def _events(sessions: sessionmaker[Session], workflow_id: int, last_id: int) -> Iterator[Event]:
    after = 0
    while True:
        with sessions() as s:
            page = list(s.scalars(select(Event).where(Event.workflow_id == workflow_id, Event.id > after,
                                                      Event.id <= last_id).order_by(Event.id).limit(EVENT_PAGE)))
        yield from page
        if len(page) < EVENT_PAGE:
            return
        after = page[-1].id


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat()


def _attrs(**values: Any) -> dict[str, str]:
    return {name: xml_safe(str(value)) for name, value in values.items() if value is not None}


def _json(value: Any) -> str:
    # ASCII JSON: every character survives XML unchanged, control characters included
    return json.dumps(value, ensure_ascii=True, sort_keys=True, default=str)


def write_document(out: IO[bytes], snap: Snapshot, sessions: sessionmaker[Session], keep: Keep,
                   bundle: BundleInfo | None, archived_by: str, now: dt.datetime) -> None:
    """Write the archive document of ``snap`` to ``out`` (streamed: events are read page by page)."""
    wf = snap.workflow
    with etree.xmlfile(out, encoding="utf-8") as xf:
        xf.write_declaration()
        root = _attrs(version="1", globalId=wf.global_id, id=wf.id, name=wf.name, owner=snap.owner, label=wf.label,
                      requestId=wf.request_id, experimentId=wf.experiment_id, state=wf.state, priority=wf.priority,
                      eventLevel=EventLevel(wf.event_level).name, publishMetadataTo=wf.publish_metadata_to,
                      submitted=_time(wf.submitted_at), started=_time(wf.started_at),
                      finished=_time(wf.finished_at), lastEventId=snap.last_event_id, archived=_time(now),
                      archivedBy=archived_by, brokerVersion=__version__)
        with xf.element(_Q % "workflowArchive", root, nsmap={None: NAMESPACE}):
            xf.write(etree.Element(_Q % "keep", {k: "true" if getattr(keep, k) else "false"
                                                 for k in ("descriptor", "state", "events", "outputs")},
                                   nsmap=_NSMAP))
            if keep.descriptor:
                text = wf.descriptor
                element = etree.Element(_Q % "descriptor", nsmap=_NSMAP,
                                        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())
                if len(text) <= DESCRIPTOR_PART_CHARS:
                    element.text = text
                else:  # every text of the document stays readable without libxml2's "huge" mode
                    for start in range(0, len(text), DESCRIPTOR_PART_CHARS):
                        etree.SubElement(element, _Q % "part").text = text[start:start + DESCRIPTOR_PART_CHARS]
                xf.write(element)
            if snap.state_xml is not None:
                with xf.element(_Q % "state"):
                    xf.write(etree.fromstring(snap.state_xml.encode("utf-8"),
                                              etree.XMLParser(huge_tree=True, resolve_entities=False)))
            if keep.events:
                with xf.element(_Q % "events", count=str(snap.event_count)):
                    for event in _events(sessions, wf.id, snap.last_event_id):
                        xf.write(_event_element(event))
            if bundle is not None:
                element = etree.Element(_Q % "bundle", _attrs(name=bundle.name, format="tar+gzip",
                                                              bytes=bundle.bytes, sha256=bundle.sha256),
                                        nsmap=_NSMAP)
                for f in bundle.files:
                    etree.SubElement(element, _Q % "file", _attrs(
                        path=f.path, node=f.node, attempt=f.attempt, stream=f.stream, bytes=f.bytes,
                        sha256=f.sha256, truncated="true" if f.truncated else "false"))
                xf.write(element)


def _event_element(event: Event) -> etree._Element:
    element = etree.Element(_Q % "event", _attrs(
        id=event.id, seq=event.seq, type=event.type, level=EventLevel(event.level).name, state=event.state,
        actor=event.actor, time=_time(event.time), node=event.node_path), nsmap=_NSMAP)
    if event.message is not None:
        etree.SubElement(element, _Q % "message").text = xml_safe(event.message)
    for name, value in sorted((event.properties or {}).items()):
        etree.SubElement(element, _Q % "property", name=xml_safe(str(name))).text = _json(value)
    return element


# ------------------------------------------------------------------------------------------------ bundle

def output_files(directories: Sequence[Path]) -> list[tuple[str, str, int, str, int]]:
    """(bundle path, node path, attempt, stream, index of its directory) of every attempt's stdout and stderr.

    Sorted by bundle path (``<node dir>/<attempt>/<stream>``); the first directory wins when two hold the
    same path.
    """
    found: dict[str, tuple[str, str, int, str, int]] = {}
    for index, root in enumerate(directories):
        for top, _dirs, files, _fd in os.fwalk(root):  # never follows symbolic links to directories
            rel_dir = os.path.relpath(top, root)
            parts = [] if rel_dir == "." else rel_dir.split(os.sep)
            if len(parts) < 2 or not parts[-1].isdigit():
                continue
            for stream in STREAMS:
                if stream in files:
                    rel = "/".join([*parts, stream])
                    node = _MEMBER_DIR.sub(r"[\1]", "/".join(parts[:-1]))
                    found.setdefault(rel, (rel, node, int(parts[-1]), stream, index))
    return [found[k] for k in sorted(found)]


def write_bundle(out: IO[bytes], name: str, directories: Sequence[Path], max_file_bytes: int) -> BundleInfo:
    """Write a tar.gz of the outputs under ``directories`` to ``out``; returns what it holds."""
    counting = _Counting(out)
    files = []
    with tarfile.open(fileobj=counting, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for rel, node, attempt, stream, index in output_files(directories):
            bundled = _add(tar, Path(directories[index]) / rel, rel, node, attempt, stream, max_file_bytes)
            if bundled is not None:
                files.append(bundled)
    return BundleInfo(name, counting.size, counting.digest.hexdigest(), tuple(files))


def _add(tar: tarfile.TarFile, path: Path, rel: str, node: str, attempt: int, stream: str,
         max_bytes: int) -> BundledFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None  # a symbolic link, or gone meanwhile
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        size = min(info.st_size, max_bytes)
        member = tarfile.TarInfo(rel)
        member.size, member.mtime, member.mode = size, int(info.st_mtime), 0o600
        digest = hashlib.sha256()
        reader = _Hashing(fh, digest, size)
        tar.addfile(member, reader)
        if reader.read_bytes != size:  # it shrank while being read: the tar would be corrupt
            raise OSError(f"{path} changed while it was being archived")
    return BundledFile(rel, node, attempt, stream, size, digest.hexdigest(), info.st_size > max_bytes)


class _Hashing:
    """A reader of at most ``limit`` bytes that hashes what it hands out."""

    def __init__(self, fh: IO[bytes], digest: Any, limit: int):
        self.fh, self.digest, self.left, self.read_bytes = fh, digest, limit, 0

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.fh.read(size)
        self.left -= len(data)
        self.read_bytes += len(data)
        self.digest.update(data)
        return data


class _Counting:
    """A write-only file that counts and hashes what passes through it."""

    def __init__(self, out: IO[bytes]):
        self.out, self.size, self.digest = out, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.size += len(data)
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()
