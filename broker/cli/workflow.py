"""``broker workflow add|list|show|remove``: stored workflows, run later by name with ``broker run NAME``.

``add FILE`` checks the description exactly as ``broker validate`` does (the same problems, exit 1) and
stores it under ``--name`` (default: the workflow's ``name`` attribute, which must then be a valid stored
name). Adding changed content under a name makes its next version; content identical to the newest
version (by SHA-256) is not stored again, and the command says so. Names are shared by every user; only
the user who added a name's first version, or an admin, adds versions or removes it (see
:mod:`broker.persistence.stored`). The command acts as the broker user ``broker run`` submits as.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from broker.cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE, add_db_option
from broker.cli.common import database_sessions, not_found_is_usage, owner_name, plural
from broker.printable import printable


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``broker workflow`` and its actions."""
    parser = subparsers.add_parser(
        "workflow", help="store workflow descriptions under a name, to run with arguments",
        description="Stored workflows: descriptions kept under a name and version, shared by every user, run "
                    "with `broker run NAME[@VERSION] --arg NAME=VALUE`. Only the user who added a name, or an "
                    "admin, adds versions to it or removes it.")
    actions = parser.add_subparsers(dest="workflow_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", parents=[common], help="check a description and store it as a new version",
                             description="Check a description (as `broker validate`: exit 1 with every problem) "
                                         "and store it under NAME: changed content becomes the next version, "
                                         "identical content is not stored again.")
    add.add_argument("file", metavar="FILE", help="workflow description ('-' for standard input)")
    add.add_argument("--name", metavar="NAME", help="the stored name (default: the workflow's name attribute); "
                                                    "letters, digits, '_', '.', '-', at most 64")
    add.set_defaults(func=_add)
    listing = actions.add_parser("list", parents=[common], help="list stored workflows (newest versions)")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(func=_list)
    show = actions.add_parser("show", parents=[common], help="show one version: parameters, versions, description")
    show.add_argument("ref", metavar="NAME[@VERSION]", help="stored name, optionally with a version (default: newest)")
    show.add_argument("--json", action="store_true", help="JSON instead of text")
    show.add_argument("--descriptor", action="store_true", help="print the description itself, as stored")
    show.set_defaults(func=_show)
    remove = actions.add_parser("remove", parents=[common], help="remove a stored workflow (every version)",
                                description="Remove every version of a stored workflow. Workflows submitted "
                                            "from it are not touched: they keep their description and their "
                                            "origin (name, version, arguments).")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=_remove)
    for action in (add, listing, show, remove):
        add_db_option(action)


def _caller(s: Any, settings: Any) -> Any:
    from broker.persistence import repository

    return repository.ensure_user(s, owner_name(settings))


def _refused(exc: Exception) -> int:
    print(f"broker: {printable(str(exc))}", file=sys.stderr)
    return EXIT_USAGE


def _add(args: argparse.Namespace, settings: Any) -> int:
    from broker.cli.run import _text
    from broker.description.load import check_description, read_description_file
    from broker.errors import ConfigError, NotAuthorized
    from broker.persistence import stored

    try:
        if args.file == "-":
            source = sys.stdin.buffer.read(settings.limits.max_document_bytes + 1)
        else:
            source = read_description_file(args.file, settings)
    except OSError as exc:
        print(f"{printable(args.file)}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    checked = check_description(source, settings, filename="<stdin>" if args.file == "-" else args.file)
    if checked.spec is None:
        for problem in checked.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    name = args.name if args.name is not None else checked.spec.name
    try:
        stored.check_name(name)
    except ConfigError as exc:
        hint = "" if args.name is not None else " (the workflow's name attribute; give one with --name)"
        return _refused(ConfigError(f"{exc}{hint}"))
    with database_sessions(settings).begin() as s:
        try:
            added = stored.add(s, _caller(s, settings), name, _text(source), checked.spec.name)
        except NotAuthorized as exc:
            return _refused(exc)
    params = plural(len(checked.spec.parameters), "parameter")
    if added.created:
        print(printable(f"stored workflow {added.name}@{added.version} ({params})"))
    else:
        print(printable(f"stored workflow {added.name}@{added.version} unchanged: the content is identical to "
                        "that version's (no new version)"))
    return EXIT_OK


def _list(args: argparse.Namespace, settings: Any) -> int:
    from broker.cli.common import iso, local_time, print_json, print_table
    from broker.persistence import stored

    with database_sessions(settings)() as s:
        entries = stored.listing(s)
    if args.json:
        print_json([{**e, "added": iso(e["added"])} for e in entries])
        return EXIT_OK
    print_table(("NAME", "VERSION", "VERSIONS", "OWNER", "WORKFLOW", "ADDED"),
                [(e["name"], e["version"], e["versions"], e["owner"] or "-", e["workflow"], local_time(e["added"]))
                 for e in entries])
    return EXIT_OK


@not_found_is_usage
def _show(args: argparse.Namespace, settings: Any) -> int:
    from broker.cli.common import iso, local_time, print_fields, print_json, print_table
    from broker.description.load import check_description
    from broker.persistence import stored

    name, version = stored.parse_ref(args.ref)
    with database_sessions(settings)() as s:
        row = stored.get(s, name, version)
        versions = [(v.version, v.descriptor_sha256, v.created_at) for v in stored.versions(s, name)]
        owner = stored.owner_name(s, row)
        descriptor = row.descriptor
        fields = (row.name, row.version, row.workflow_name, row.descriptor_sha256, row.created_at)
    if args.descriptor:
        sys.stdout.write(descriptor if descriptor.endswith("\n") else descriptor + "\n")
        return EXIT_OK
    checked = check_description(descriptor.encode("utf-8", "surrogatepass"), settings,
                                filename=f"{name}@{fields[1]}")
    params = checked.spec.parameters if checked.spec is not None else ()
    if args.json:
        print_json({"name": fields[0], "version": fields[1], "workflow": fields[2], "sha256": fields[3],
                    "added": iso(fields[4]), "owner": owner,
                    "versions": [{"version": v, "sha256": h, "added": iso(t)} for v, h, t in versions],
                    "parameters": [{"name": p.name, "type": p.type, "list": p.multiple, "required": p.required,
                                    "default": p.default, "choices": list(p.choices), "description": p.description}
                                   for p in params]})
        return EXIT_OK
    print_fields([("name", f"{fields[0]}@{fields[1]} (of {plural(len(versions), 'version')})"),
                  ("workflow", fields[2]), ("owner", owner or "- (removed user)"), ("sha256", fields[3]),
                  ("added", local_time(fields[4]))])
    if checked.spec is None:  # stored by a broker whose rules were looser: say so rather than hide it
        print("this version no longer passes validation:")
        for problem in checked.problems:
            print(f"  {problem}")
    print()
    if params:
        print_table(("PARAMETER", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"),
                    [(p.name, p.type + (" list" if p.multiple else "")
                      + (f" ({'|'.join(p.choices)})" if p.choices else ""),
                      "yes" if p.required else "no", "-" if p.default is None else p.default, p.description or "")
                     for p in params])
    else:
        print("no parameters")
    print()
    print_table(("VERSION", "SHA256", "ADDED"), [(v, h, local_time(t)) for v, h, t in versions])
    return EXIT_OK


@not_found_is_usage
def _remove(args: argparse.Namespace, settings: Any) -> int:
    from broker.errors import NotAuthorized
    from broker.persistence import stored

    stored.check_name(args.name)
    with database_sessions(settings).begin() as s:
        try:
            removed, used = stored.remove(s, _caller(s, settings), args.name)
        except NotAuthorized as exc:
            return _refused(exc)
    keep = "keeps its" if used == 1 else "keep their"
    note = f"; {plural(used, 'workflow')} submitted from it {keep} description and origin" if used else ""
    print(printable(f"removed stored workflow {args.name} ({plural(removed, 'version')}){note}"))
    return EXIT_OK
