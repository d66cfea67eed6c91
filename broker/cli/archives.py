"""``broker admin archive --list URI`` and ``--show URI``: reading archives back (see broker.cli.admin).

``--show`` reads the archive document (validated against schemas/archive-record.xsd) and checks its bundle
against the size and SHA-256 the document names; a damaged archive exits 3. ``--descriptor``, ``--state``,
``--events`` and ``--file PATH`` print one part instead of the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import posixpath
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from broker.cli import EXIT_OK, UsageError
from broker.printable import printable
from broker.cli.common import not_found_is_usage, one_line, plural, print_table, stops_when_output_closes


@contextlib.contextmanager
def target_for(uri: str, settings: Any, sessions: Any = None, *, for_write: bool) -> Iterator[Any]:
    """The archive target of a URI; for sftp:// with the catalogue, the accounts and an SSH pool of its own."""
    from broker.admin.targets import open_target
    from broker.cli.common import owner_name

    if urlsplit(uri).scheme != "sftp":
        yield open_target(uri, settings.archive, for_write=for_write)
        return
    from broker.resources import Resources
    from broker.resources.accounts import load_table

    accounts: dict[Any, Any] = {}
    if sessions is not None:
        with sessions() as s:
            accounts = load_table(s)
    resources = Resources(settings, accounts=accounts)
    try:
        yield open_target(uri, settings.archive, resources, owner_name(settings), for_write=for_write)
    finally:
        resources.close()


@contextlib.contextmanager
def _reading(uri: str, settings: Any) -> Iterator[Any]:
    """A target to read from; for sftp:// the accounts table is read when there is a database."""
    from broker.cli.common import reader, sqlite_file_missing

    if urlsplit(uri).scheme != "sftp" or sqlite_file_missing(settings.database_url()) is not None:
        with target_for(uri, settings, None, for_write=False) as target:
            yield target
        return
    with reader(settings) as sessions, target_for(uri, settings, sessions, for_write=False) as target:
        yield target


@stops_when_output_closes
@not_found_is_usage
def list_command(args: argparse.Namespace, settings: Any) -> int:
    """Print the archives of a directory."""
    from broker.admin.reader import list_archives
    from broker.cli.common import local_time

    with _reading(args.list, settings) as target:
        found = list_archives(target)
    if not found:
        print(f"no archives in {printable(args.list)}")
        return EXIT_OK
    print_table(("WORKFLOW", "USER", "STATE", "FINISHED", "ARCHIVED", "BY", "NAME"),
                [(a.global_id, a.owner, a.state, _shown(a.finished, local_time), _shown(a.archived, local_time),
                  a.archived_by, one_line(a.workflow_name, 40)) for a in found])
    return EXIT_OK


def _shown(text: str | None, local_time: Any) -> str:
    import datetime as dt

    if not text:
        return "-"
    try:
        return local_time(dt.datetime.fromisoformat(text))
    except ValueError:
        return text


def _split(uri: str) -> tuple[str, str]:
    """(directory URI, file name) of a document URI."""
    parts = urlsplit(uri)
    directory, name = posixpath.split(unquote(parts.path))
    if not name.endswith(".xml"):
        raise UsageError(f"--show takes the URI of an archive document (.../wf-....xml), not {uri!r}")
    return urlunsplit((parts.scheme, parts.netloc, directory or "/", "", "")), name


@stops_when_output_closes
@not_found_is_usage
def show_command(args: argparse.Namespace, settings: Any) -> int:
    """Print one archive, or one part of it."""
    from broker.admin.reader import bundled_file, read_archive

    directory, name = _split(args.show)
    with _reading(directory, settings) as target:
        archive = read_archive(target, name)
        if args.file:
            if archive.bundle is None:
                raise UsageError(f"{archive.uri} keeps no outputs")
            sys.stdout.flush()
            sys.stdout.buffer.write(bundled_file(target, archive.bundle, args.file))
            return EXIT_OK
    if args.descriptor or args.state:
        text = archive.descriptor if args.descriptor else archive.state_xml
        if text is None:
            raise UsageError(f"{archive.uri} does not keep the {'descriptor' if args.descriptor else 'state'}")
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return EXIT_OK
    if args.events:
        if archive.events is None:
            raise UsageError(f"{archive.uri} does not keep the events")
        print_table(("ID", "TIME", "TYPE", "STATE", "NODE", "ACTOR", "MESSAGE"),
                    [(e["id"], e["time"], e["type"], e.get("state") or "", e.get("node") or "", e["actor"],
                      one_line(e["message"], 60)) for e in archive.events])
        return EXIT_OK
    _summary(archive)
    return EXIT_OK


def _summary(archive: Any) -> None:
    f = archive.fields
    print(printable(f"archive   {archive.uri}"))
    print(printable(f"workflow  {f['globalId']} (id {f['id']}, name {f['name']!r}) of {f['owner']}: {f['state']}"))
    print(printable(f"times     submitted {f['submitted']}, started {f.get('started', '-')}, "
                    f"finished {f.get('finished', '-')}"))
    print(printable(f"archived  {f['archived']} by {f['archivedBy']} (broker {f['brokerVersion']}; events up to "
                    f"id {f['lastEventId']})"))
    kept = [part for part in ("descriptor", "state") if archive.keep[part]]
    if archive.events is not None:
        kept.append(f"events ({len(archive.events)})")
    if archive.bundle is not None:
        b = archive.bundle
        kept.append(f"outputs ({plural(len(b.files), 'file')} in {b.name}, {b.bytes} bytes, checksum OK)")
    print(f"kept      {', '.join(kept) or 'nothing but the workflow fields'}")
    if archive.bundle is not None and archive.bundle.files:
        print_table(("FILE", "NODE", "ATTEMPT", "STREAM", "BYTES", "TRUNCATED"),
                    [(x.path, x.node, x.attempt, x.stream, x.bytes, "yes" if x.truncated else "")
                     for x in archive.bundle.files])
