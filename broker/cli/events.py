"""``broker events ID``: a workflow's recorded events, one per line, oldest first.

Each line is ``id time seq level type node state message``, tab-free and space-separated, ``-`` for an
empty field. ``--after LAST_ID`` starts after an event id (the paging key of the API), ``--limit N`` stops
after N events. ``--follow`` keeps polling the database (every half second) until the workflow has ended
and its last event has been printed, or Ctrl-C. A node ID shows the events of that node only.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from broker.cli import EXIT_OK, UsageError, add_db_option, startup_over
from broker.printable import printable
from broker.cli.common import (local_time, not_found_is_usage, one_line, reader, resolve,
                               stops_when_output_closes)

#: seconds between database polls with --follow
FOLLOW_INTERVAL = 0.5
#: events read per query
PAGE = 1000


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``events`` command."""
    parser = subparsers.add_parser(
        "events", parents=[common], help="print a workflow's events (optionally following new ones)",
        description="Print a workflow's events, one per line: id time seq level type node state message. "
                    "Exit 2: unknown ID.")
    parser.add_argument("id", metavar="ID", help="workflow global id (wf-...), number, or node global id")
    add_db_option(parser)
    parser.add_argument("--follow", "-f", action="store_true",
                        help="keep printing new events until the workflow ends (or Ctrl-C)")
    parser.add_argument("--after", type=int, default=0, metavar="LAST_ID", help="only events after this id")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="print at most N events")
    parser.set_defaults(func=events)


@stops_when_output_closes
@not_found_is_usage
def events(args: argparse.Namespace, settings: Any) -> int:
    """Print (and with --follow, keep printing) the events of a workflow or node."""
    if args.limit is not None and args.limit <= 0:
        raise UsageError(f"--limit must be positive, got {args.limit}")
    if args.after < 0:
        raise UsageError(f"--after must not be negative, got {args.after}")
    with reader(settings) as sessions:
        with sessions() as s:
            target = resolve(s, args.id)
        last = args.after
        left = args.limit
        if sys.stdout.isatty():  # for a reader; scripts reading a pipe get the event lines only
            sys.stdout.write(HEADER + "\n")
        if args.follow:
            startup_over()  # from here on the process may run for hours
        while True:
            # read the state before the events: the event of a state change is committed with it, so once
            # the state read here is final, the page read next holds every event there will be
            ended = _ended(sessions, target.workflow_id)
            batch = _page(sessions, target.workflow_id, target.node_path, last, PAGE if left is None
                          else min(PAGE, left))
            for event in batch:
                sys.stdout.write(format_event(event) + "\n")
            sys.stdout.flush()
            if batch:
                last = batch[-1].id
                if left is not None:
                    left -= len(batch)
                    if left <= 0:
                        return EXIT_OK
                if len(batch) == PAGE:
                    continue  # more may be waiting right now
            if not args.follow or ended:
                return EXIT_OK
            time.sleep(FOLLOW_INTERVAL)  # a poll interval, not a wait for a condition


#: the names of the fields of :func:`format_event`'s lines, printed first on a terminal
HEADER = "ID TIME SEQ LEVEL TYPE NODE STATE MESSAGE"


def format_event(event: Any) -> str:
    """``id time seq level type node state message`` on one line."""
    from broker.events.types import EventLevel

    try:
        level = EventLevel(event.level).name
    except ValueError:
        level = str(event.level)
    fields = [str(event.id), local_time(event.time, millis=True).replace(" ", "T"),
              "-" if event.seq is None else str(event.seq), level, event.type, event.node_path or "-",
              event.state or "-", one_line(event.message, 500) or "-"]
    return printable(" ".join(fields))


def _ended(sessions: Any, workflow_id: int) -> bool:
    from broker.persistence.models import Workflow
    from broker.states import WORKFLOW_TERMINAL

    with sessions() as s:
        return s.get(Workflow, workflow_id).state in WORKFLOW_TERMINAL


def _page(sessions: Any, workflow_id: int, node_path: str | None, after: int, limit: int) -> list[Any]:
    from sqlalchemy import select

    from broker.persistence.models import Event

    query = select(Event).where(Event.workflow_id == workflow_id, Event.id > after)
    if node_path is not None:
        query = query.where(Event.node_path == node_path)
    with sessions() as s:
        return list(s.scalars(query.order_by(Event.id).limit(limit)))
