"""``broker admin state|users|hosts|delete|archive``: operate the service from the command line.

``state``, ``users`` and ``hosts`` print what the API's ``getServiceState``, ``getUserInfo`` and ``getHosts``
answer (same queries; ``hosts`` reads the catalogue of ``[hosts] catalogue``).
``delete`` and ``archive --to`` change the database: they take the broker lock for their whole run and
record ADMIN_ACTION events themselves as ``admin:<operator>`` (``[engine] user``, else the login name).
While a broker runs they go through it, with the same output: each deletion and record is a request its writer
applies (:class:`broker.admin.audit.RequestWriter`). ``delete`` lists what it will remove and asks on standard
input unless ``--yes``; ``--dry-run`` only lists.
``archive --list URI`` and ``archive --show URI`` read archives back.

Exit codes: 0 done (also when some workflows were skipped and reported), 1 declined at the prompt, 2 bad
usage or unknown id/user, 3 runtime error (the broker did not apply it, the target failed, a workflow could not go).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from broker.cli import EXIT_INVALID, EXIT_OK, UsageError, add_db_option
from broker.cli.hosts import hosts_command
from broker.printable import printable
from broker.cli.common import (local_time, not_found_is_usage, one_line, plural, print_json, print_table,
                               stops_when_output_closes)

#: seconds between two looks at the outbox while --wait lets the relay publish
DRAIN_POLL = 0.1
#: seconds a running broker has to apply a deletion or a record this command asks it for
REQUEST_TIMEOUT = 60.0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``broker admin`` and its actions."""
    parser = subparsers.add_parser("admin", help="operate the service: state, users, hosts, delete, archive",
                                   description="Operate the service: its state and users, deleting and archiving "
                                               "finished workflows.")
    actions = parser.add_subparsers(dest="admin_action", metavar="ACTION", required=True)
    state = actions.add_parser("state", parents=[common], help="workflows and nodes by state, hosts, backlog "
                                                               "(as getServiceState)")
    state.set_defaults(func=state_command)
    users = actions.add_parser("users", parents=[common], help="every user with their workflows (as getUserInfo)")
    users.set_defaults(func=users_command)
    hosts = actions.add_parser("hosts", parents=[common], help="the catalogue's hosts with tags, limits and nodes in "
                                                               "flight (as getHosts)")
    hosts.set_defaults(func=hosts_command)
    for action in (state, users, hosts):
        action.add_argument("--json", action="store_true", help="print JSON for scripts")

    delete = actions.add_parser(
        "delete", parents=[common], help="delete finished workflows and their work directories",
        description="Delete finished workflows: their rows (nodes, events, outbox) and work directories. Running "
                    "workflows, and with a bus configured those whose final events are not yet published, are "
                    "skipped and reported. Lists what it will remove and asks unless --yes.")
    which = delete.add_mutually_exclusive_group(required=True)
    which.add_argument("--completed", action="store_true", help="every finished workflow")
    which.add_argument("--before", metavar="DATE", type=_when,
                       help="workflows that finished before DATE (2025-01-31, 2025-01-31T12:00 local time, "
                            "or with a zone: ...+02:00, ...Z; or epoch milliseconds)")
    which.add_argument("--id", action="append", metavar="ID", help="one workflow (wf-... or its number); repeatable")
    which.add_argument("--user", metavar="USER", help="every finished workflow of USER")
    delete.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="with a bus configured: first publish pending events, then the deletion's own "
                             "ADMIN_ACTION, within SECONDS (this command runs the outbox relay, as no broker runs)")
    delete.set_defaults(func=delete_command)

    archive = actions.add_parser(
        "archive", parents=[common], help="archive finished workflows; list and show archives",
        description="--to URI --selection FILE: archive the workflows the selection (schemas/archive.xsd) chooses "
                    "to file:///DIR (in [archive] roots) or sftp://HOST/DIR (in [archive] remote_roots), one "
                    "document and one bundle per workflow, and delete them once archived if it says "
                    "deleteAfter=\"true\". --list URI: the archives there. --show URI: one archive (URI of its "
                    ".xml document), checked.")
    mode = archive.add_mutually_exclusive_group(required=True)
    mode.add_argument("--to", metavar="URI", help="where to write the archives")
    mode.add_argument("--list", metavar="URI", help="list the archives in a directory")
    mode.add_argument("--show", metavar="URI", help="show one archive (its document's URI)")
    archive.add_argument("--selection", metavar="FILE", help="the selection document (with --to)")
    part = archive.add_mutually_exclusive_group()
    part.add_argument("--descriptor", action="store_true", help="with --show: print the description")
    part.add_argument("--state", action="store_true", help="with --show: print the final state XML")
    part.add_argument("--events", action="store_true", help="with --show: print the events")
    part.add_argument("--file", metavar="PATH", help="with --show: print one bundled file (node/attempt/stream)")
    archive.set_defaults(func=archive_command)
    for action in (delete, archive):
        action.add_argument("--yes", action="store_true", help="do not ask before deleting")
        action.add_argument("--dry-run", action="store_true", help="only list what would be done")
    for action in (state, users, delete, archive):
        add_db_option(action)


def _when(text: str) -> dt.datetime:
    """A --before value as an aware UTC time (no zone: local time)."""
    text = text.strip()
    try:
        if text.isdigit():
            return dt.datetime.fromtimestamp(int(text) / 1000, dt.timezone.utc)
        value = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(f"not a date, time or epoch milliseconds: {text!r}") from None
    return (value if value.tzinfo else value.astimezone()).astimezone(dt.timezone.utc)


# ------------------------------------------------------------------------------------------ state, users

@stops_when_output_closes
def state_command(args: argparse.Namespace, settings: Any) -> int:
    """Print the service state (getServiceState's AggregateSummary, with whether a broker runs)."""
    from broker.admin.state import as_json, service_state
    from broker.cli.common import ordered_counts, reader
    from broker.persistence.lock import broker_running

    with reader(settings) as sessions, sessions() as s:
        state = service_state(s)
    running = broker_running(settings.database_url())
    bus = settings.events.publishing
    if args.json:
        print_json(as_json(state, running, bus))
        return EXIT_OK
    # without a bus no outbox rows are written: a backlog would mean nothing (rows of an earlier configuration)
    events = f"outbox backlog: {plural(state.outbox_backlog, 'event')}" if bus else (
        "events: no bus ([events] url is empty: events are stored, never published)")
    print(f"broker: {'running' if running else 'not running'} on this database; {events}")
    print("workflows: " + (", ".join(f"{n} {s}" for s, n in ordered_counts(state.workflows)) or "none"))
    print("nodes: " + (", ".join(f"{n} {s}" for s, n in ordered_counts(state.nodes)) or "none"))
    if state.hosts:
        print_table(("HOST", "JOBS IN FLIGHT"), [(h or "(not placed)", n) for h, n in state.hosts.items()])
    return EXIT_OK


@stops_when_output_closes
def users_command(args: argparse.Namespace, settings: Any) -> int:
    """Print every user with their workflows by state (getUserInfo)."""
    from broker.admin.state import user_json, users
    from broker.cli.common import ordered_counts, reader

    with reader(settings) as sessions, sessions() as s:
        infos = users(s)
    if args.json:
        print_json([user_json(i) for i in infos])
        return EXIT_OK
    print_table(("USER", "ROLE", "WORKFLOWS", "BY STATE", "LAST SUBMITTED"),
                [(i.name, i.role, sum(i.workflows.values()),
                  ", ".join(f"{n} {s}" for s, n in ordered_counts(i.workflows)) or "-", local_time(i.last_submitted))
                 for i in infos])
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ delete

@contextlib.contextmanager
def operating(settings: Any, *, lock: bool = True) -> Iterator[Any]:
    """A Deleter on the configured database, holding the broker lock (refused while a broker runs)."""
    from broker.admin.delete import Deleter, journal_for
    from broker.admin.audit import OwnWriter, RequestWriter
    from broker.cli.common import owner_name, reader
    from broker.config import default_state_dir
    from broker.errors import BrokerLocked
    from broker.persistence.lock import BrokerLock

    actor = f"admin:{owner_name(settings)}"
    # this command prints each step itself; the library's INFO lines (written for `broker serve`'s log) would
    # repeat every one of them
    admin_log = logging.getLogger("broker.admin")
    if admin_log.getEffectiveLevel() > logging.DEBUG:
        admin_log.setLevel(logging.WARNING)
    held = BrokerLock(settings.database_url(), settings.engine, role="broker admin")
    through = False
    try:
        held.acquire() if lock else None
    except BrokerLocked:  # a broker runs: its writer applies the change (a request), this command does the rest
        through = True
    try:
        with reader(settings) as sessions, _RemoteHosts(settings, sessions) as remote:
            root = Path(settings.engine.workdir or default_state_dir() / "work").absolute()
            publishing = settings.events.publishing
            holder = _holder_line(sessions) if through else None  # else: the lock held, a store of its own writes
            if through and holder is None:  # a command holding the lock for a moment, not a broker
                raise BrokerLocked("another process holds the database and runs no broker that could apply "
                                   "the change: try again once it has ended")
            writer: Any = (RequestWriter(sessions, timeout=REQUEST_TIMEOUT, holder=holder)
                           if through else OwnWriter(sessions, limits=settings.limits, publishing=publishing))
            deleter = Deleter(sessions, writer, actor, workdir_root=root, journal=journal_for(root, settings.database_url()),
                              require_drained=publishing, remove_remote=remote)
            deleter.through_broker = through
            if lock and not through:
                for gid in deleter.recover():
                    print(f"removed the remaining work directories of {gid} (deleted earlier)")
            yield deleter
    finally:
        if lock and not through:
            held.release()


def _holder_line(sessions: Any) -> str | None:
    """Who holds the database, for messages (its writer_info row); None when no broker says it does."""
    from broker.persistence import requests

    with sessions() as s:
        return getattr(requests.writer_info(s), "holder", None)


class _RemoteHosts:
    """Removes deleted workflows' directories on remote hosts; connects (catalogue, accounts) on first use."""

    def __init__(self, settings: Any, sessions: Any):
        self.settings, self.sessions = settings, sessions
        self.launchers: Any = None

    def __enter__(self) -> _RemoteHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.launchers is not None:
            self.launchers.close()
            self.launchers.resources.close()

    def __call__(self, host: str, owner: str, global_id: str) -> None:
        if self.launchers is None:
            from broker.launchers.registry import Launchers
            from broker.resources import Resources
            from broker.resources.accounts import load_table

            with self.sessions() as s:
                accounts = load_table(s)
            self.launchers = Launchers(Resources(self.settings, accounts=accounts))
        self.launchers.remove_workflow(host, owner, global_id)


@not_found_is_usage
def delete_command(args: argparse.Namespace, settings: Any) -> int:
    """``broker admin delete``: list, ask, delete."""
    from broker.admin.delete import Selection, resolve_workflow
    from broker.errors import StateError
    from broker.persistence import queries

    deadline = time.monotonic() + args.wait
    with operating(settings, lock=not args.dry_run) as deleter:
        with deleter.sessions() as s:
            if args.user:
                what = f"deleteAllForUser {args.user}"
                selection = Selection(owner_id=queries.user_by_name(s, args.user).id)
            elif args.before:
                what = f"deleteAllBefore {args.before.isoformat()}"
                selection = Selection(finished_before=args.before)
            elif args.id:
                ids = tuple(dict.fromkeys(resolve_workflow(s, i) for i in args.id))
                what = "delete " + " ".join(args.id)
                selection = Selection(workflow_ids=ids)
            else:
                what = "deleteAllCompleted"
                selection = Selection(completed_only=True)
        plan = deleter.plan(selection)
        if args.wait > 0 and not args.dry_run and any(r.state in queries.COMPLETED for r in plan.skipped):
            plan = _drain(deleter, settings, selection, plan, args.wait)
        _show_plan(plan.deletable, plan.skipped, "delete")
        if args.dry_run or not plan.deletable:
            return _refused(args, plan.skipped)
        if not args.yes and not _confirm(f"delete {plural(len(plan.deletable), 'workflow')} and their work "
                                         "directories?"):
            print("nothing deleted")
            return EXIT_INVALID
        result = deleter.delete(plan.deletable, what, skipped=plan.skipped)
        if args.wait > 0:
            _publish_record(deleter, settings, deadline)
    print(f"deleted {plural(len(result.deleted), 'workflow')}" + (f": {', '.join(result.deleted)}"
                                                                  if len(result.deleted) <= 10 else ""))
    left = [(gid, reason) for gid, reason in zip(result.skipped, result.reasons)]
    for gid, reason in left[len(plan.skipped):]:
        print(f"not deleted: {printable(reason)}")
    if args.id and len(result.deleted) < len(args.id):
        raise StateError(f"{plural(len(args.id) - len(result.deleted), 'workflow')} could not be deleted")
    return EXIT_OK


def _refused(args: argparse.Namespace, skipped: Sequence[Any]) -> int:
    """The exit code when nothing is deleted: naming one workflow that cannot go is an error."""
    from broker.errors import StateError

    if args.id and skipped and not args.dry_run:
        raise StateError(f"cannot delete: {skipped[0].reason}")
    return EXIT_OK


def _drain(deleter: Any, settings: Any, selection: Any, plan: Any, wait: float) -> Any:
    """Run the outbox relay (no broker runs) until the selected workflows' events are published or time is up."""
    from broker.events.relay import OutboxRelay
    from broker.persistence import queries

    # with a broker running, its own relay publishes them: only wait
    relay = None if deleter.through_broker else OutboxRelay.from_settings(settings.events, deleter.sessions)
    if relay is None and not deleter.through_broker:
        return plan
    waiting = {r.id for r in plan.skipped if r.state in queries.COMPLETED}
    print(f"publishing the pending events of {plural(len(waiting), 'workflow')} (up to {wait:g} s)...")
    if relay is not None:
        relay.start()
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with deleter.sessions() as s:
                if not waiting & queries.undrained(s):
                    break
            time.sleep(DRAIN_POLL)  # a poll interval while the relay works, not a wait for a result
    finally:
        if relay is not None:
            relay.stop()
    return deleter.plan(selection)


def _publish_record(deleter: Any, settings: Any, deadline: float) -> None:
    """Run the outbox relay (no broker runs) until the deletion's own ADMIN_ACTION is published, within --wait."""
    import dataclasses

    from broker.events.relay import OutboxRelay

    if deleter.through_broker:
        return  # the running broker's relay publishes it
    # what is left of --wait, but never nothing: the record was just written, publishing it is quick
    wait = max(deadline - time.monotonic(), 1.0)
    relay = OutboxRelay.from_settings(dataclasses.replace(settings.events, exit_drain_timeout=wait),
                                      deleter.sessions, exit_drain=True)
    if relay is None:
        return
    left = relay.start().stop()  # the stop drains the outbox, for at most ``wait`` s
    if left:
        print(f"{plural(left, 'event message')} not yet published on the bus (the next broker publishes them)")


def _show_plan(rows: Sequence[Any], skipped: Sequence[Any], verb: str) -> None:
    if rows:
        print(f"will {verb} {plural(len(rows), 'workflow')}:")
        print_table(("WORKFLOW", "USER", "STATE", "FINISHED", "NAME"),
                    [(r.global_id, r.owner, r.state, local_time(r.finished_at), one_line(r.name, 40)) for r in rows])
    else:
        print(f"nothing to {verb}")
    for row in skipped:
        print(f"skipped: {printable(row.reason)}")


def _confirm(question: str) -> bool:
    sys.stdout.write(f"{printable(question)} [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


# ----------------------------------------------------------------------------------------------- archive

def archive_command(args: argparse.Namespace, settings: Any) -> int:
    """``broker admin archive``: write archives (--to), or read them back (--list, --show)."""
    if not args.show and (args.descriptor or args.state or args.events or args.file):
        raise UsageError("--descriptor, --state, --events and --file only go with --show")
    if args.to:
        if not args.selection:
            raise UsageError("--to needs --selection FILE (an <archive> document, see schemas/archive.xsd)")
        return _archive_to(args, settings)
    if args.selection:
        raise UsageError("--selection only goes with --to")
    from broker.cli.archives import list_command, show_command

    return list_command(args, settings) if args.list else show_command(args, settings)


@not_found_is_usage
def _archive_to(args: argparse.Namespace, settings: Any) -> int:
    from broker.admin.archive import archive_workflows, plan_archive
    from broker.admin.selection import parse_selection
    from broker.cli.archives import target_for

    try:
        source = Path(args.selection).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.selection}: {exc.strerror}") from None
    selection = parse_selection(source, filename=args.selection)
    with operating(settings, lock=not args.dry_run) as deleter:
        rows, left = plan_archive(deleter.sessions, selection)
        _show_plan(rows, left, "archive and then delete" if selection.delete_after else "archive")
        with target_for(args.to, settings, deleter.sessions, for_write=True) as target:
            if args.dry_run or not rows:
                return EXIT_OK
            if selection.delete_after and not args.yes and not _confirm(
                    f"archive {plural(len(rows), 'workflow')} to {target.uri}, then delete them?"):
                print("nothing archived")
                return EXIT_INVALID
            report = archive_workflows(target, selection, deleter, max_file_bytes=settings.archive.max_file_bytes,
                                       progress=lambda gid: print(f"archived {gid}", flush=True))
    print(f"archived {plural(len(report.archived), 'workflow')} to {printable(report.target)}"
          + (f", deleted {len(report.deleted)}" if selection.delete_after else ""))
    for gid, reason in report.skipped[len(left):]:
        print(f"not done: {printable(reason)}")
    return EXIT_OK
