"""``broker run FILE`` and ``broker resume ID``: run one workflow in this process, to its end.

``run`` checks the description (problems as ``FILE:LINE:COLUMN: message``, exit 1; unreadable file, exit
2), a file or a stored workflow (``NAME[@VERSION]``, when no file of that name exists), binds its
``--arg`` values (an argument error is one line, exit 2), starts the engine on the database (the embedded SQLite file unless ``--db``), and submits the
workflow, unless the database already holds an unfinished workflow of the same owner with the same
descriptor and arguments: that one is resumed instead (re-attaching to payloads still running). ``resume ID`` resumes a
workflow by id. Both show live progress on stderr and a summary on stdout, then exit 0 when the workflow
succeeded and 1 when it did not.

Ctrl-C cancels the workflow and waits for its end (exit 130); a second Ctrl-C, or SIGTERM, stops at once
and leaves payloads running (a later ``broker resume`` re-attaches to them). The signal handlers only set
flags: the main loop does the work.

While another broker holds the database, both hand the workflow to it and follow it from the database
(:mod:`broker.cli.handoff`); a run that holds the database keeps it, after its own workflow, until the
workflows handed to it have ended.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from broker.cli import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, add_db_option
from broker.cli.common import not_found_is_usage, owner_name
from broker.cli.runstart import (announce_resume, recorded_work_root, started, stopping, then_handed,
                                 unfinished)
from broker.printable import printable

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``run`` and ``resume`` commands."""
    run_parser = subparsers.add_parser(
        "run", parents=[common], help="run a workflow in this process, with live progress",
        description="Run a workflow in this process until it ends, showing progress. If the database holds an "
                    "unfinished workflow of yours with the same description, it is resumed instead of submitted "
                    "again. Exit 0: succeeded; 1: failed, cancelled or invalid description; 2: unreadable file; "
                    "3: error (database held by a broker that cannot take it...); 130: interrupted. Another "
                    "broker holding the database is handed the workflow, which is followed here. Ctrl-C cancels the "
                    "workflow; a second Ctrl-C stops at once, leaving payloads running (`broker resume` "
                    "re-attaches).")
    run_parser.add_argument("file", metavar="FILE|NAME[@VERSION]",
                            help="workflow description ('-' for standard input), or the name of a stored workflow "
                                 "(`broker workflow add`), its newest version unless @VERSION: an existing file "
                                 "path wins over a stored name (write ./NAME to mean the file)")
    run_parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", dest="arguments",
                            help="a value for one of the workflow's declared parameters (repeat for each); a file "
                                 "parameter takes a local path, whose content becomes the value")
    resume_parser = subparsers.add_parser(
        "resume", parents=[common], help="resume an unfinished workflow in this process",
        description="Resume an unfinished workflow (after a killed `broker run`, or a restart): re-attach to "
                    "payloads still running, recover the ones that ended meanwhile, run the rest. Exit codes as "
                    "for `broker run`.")
    resume_parser.add_argument("id", metavar="ID", help="workflow global id (wf-...), node global id, or number")
    for parser, handler in ((run_parser, run), (resume_parser, resume)):
        add_db_option(parser)
        parser.add_argument("--workdir", metavar="DIR",
                            help="root of the node work directories (overrides [engine] workdir; for resume, the "
                                 "default is the root the workflow was submitted with)")
        parser.add_argument("--detach", action="store_true",
                            help="while another broker holds the database: hand the workflow to it and return once "
                                 "it is taken, printing its id (without: follow it to its end here)")
        parser.set_defaults(func=handler)


# ---------------------------------------------------------------------------------------------- commands

def run(args: argparse.Namespace, settings: Any) -> int:
    """``broker run FILE``: check, submit (or resume the same unfinished workflow), follow to the end."""
    import hashlib

    from broker.cli.progress import Tracker
    from broker.description.load import check_description, read_description_file
    from broker.errors import LimitExceeded

    from broker.description.arguments import bind, local_reader, parse_assignments

    owner = owner_name(settings)
    given = parse_assignments(args.arguments)  # a malformed --arg is refused before anything is read
    origin = None
    try:
        if args.file == "-":
            source = sys.stdin.buffer.read(settings.limits.max_document_bytes + 1)
        elif os.path.exists(args.file) or not _looks_stored(args.file):
            source = read_description_file(args.file, settings)
        else:
            source, origin = _stored_source(settings, args.file)
    except OSError as exc:
        print(f"{printable(args.file)}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    filename = "<stdin>" if args.file == "-" else args.file if origin is None else f"{origin[0]}@{origin[1]}"
    checked = check_description(source, settings, filename=filename)
    if checked.spec is None:
        for problem in checked.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    try:
        spec = bind(checked.spec, given, settings.limits, read_file=local_reader(settings.limits))
    except LimitExceeded as exc:  # refused content, like an invalid description
        print(f"broker: {printable(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    from broker.events.routing import metadata_destination_problem

    metadata_to = spec.publish_metadata_to
    if metadata_to and (why := metadata_destination_problem(metadata_to, settings.events.metadata_destinations)):
        print(f"{filename}: {why}", file=sys.stderr)
        return EXIT_INVALID
    descriptor = _text(source)
    digest = hashlib.sha256(descriptor.encode("utf-8")).hexdigest()

    if args.workdir is None:
        args.workdir = recorded_work_root(settings, owner, digest, spec.arguments)
    tracker = Tracker()
    came = f" from stored workflow {origin[0]}@{origin[1]}" if origin else ""
    engine = started(settings, args, tracker, "run", handing={
        "kind": "submit", "owner": owner, "name": spec.name + came, "digest": digest, "arguments": spec.arguments,
        "payload": {"descriptor": descriptor, "filename": filename, "owner": owner, "options": {},
                    "arguments": dict(spec.arguments or ()), "origin": list(origin) if origin else None}})
    if isinstance(engine, int):
        return engine
    with stopping(engine, settings):
        found = unfinished(engine.sessions, owner, digest, spec.arguments)
        if found is not None:
            done_before = announce_resume(engine.sessions, found)
            accepted = engine.track(found)
        else:
            try:
                accepted = engine.submit(spec, descriptor, owner, origin=origin)
            except LimitExceeded as exc:  # refused content, like an invalid description ([limits] max_nodes_per_user)
                print(f"broker: {printable(str(exc))}", file=sys.stderr)
                return EXIT_INVALID
            done_before = 0
            print(f"submitted workflow {accepted.global_id} (id {accepted.workflow_id}): {printable(spec.name)}"
                  + printable(came), flush=True)
        return then_handed(engine, follow(engine, accepted.workflow_id, accepted.global_id, tracker, owner,
                                           done_before))


@not_found_is_usage
def resume(args: argparse.Namespace, settings: Any) -> int:
    """``broker resume ID``: track an unfinished workflow and follow it to the end."""
    from broker.cli.common import reader, resolve
    from broker.cli.progress import Tracker
    from broker.persistence.models import Workflow
    from broker.states import WORKFLOW_TERMINAL

    owner = owner_name(settings)
    with reader(settings) as sessions, sessions() as s:
        target = resolve(s, args.id)
        workflow = s.get(Workflow, target.workflow_id)
        state, work_root = workflow.state, workflow.work_root
    if args.workdir is None and work_root is not None:
        # new attempts go where the recovered ones are, not under whatever root this invocation defaults to
        args.workdir = work_root
    if state in WORKFLOW_TERMINAL:
        print(f"workflow {target.workflow_global_id} has already ended: {state}"
              + ("" if state == "succeeded" else f" (`broker restart {target.workflow_global_id}` gives its "
                                                 "failed, cancelled and skipped nodes a fresh attempt)"))
        return EXIT_OK if state == "succeeded" else EXIT_INVALID
    tracker = Tracker()
    engine = started(settings, args, tracker, "resume", handing={
        "kind": "resume", "owner": owner, "name": None, "gid": target.workflow_global_id,
        "payload": {"workflow_id": target.workflow_id}})
    if isinstance(engine, int):
        return engine
    with stopping(engine, settings):
        done_before = announce_resume(engine.sessions, target.workflow_id)
        accepted = engine.track(target.workflow_id)
        return then_handed(engine, follow(engine, accepted.workflow_id, accepted.global_id, tracker, owner,
                                           done_before))


# ------------------------------------------------------------------------------------------------ follow

def follow(engine: Any, workflow_id: int, global_id: str, tracker: Any, owner: str, done_before: int) -> int:
    """Show progress until the workflow ends (or the user stops it); print the summary; return the exit code."""
    from broker.cli import startup_over
    from broker.cli.progress import ESTIMATE_INTERVAL, Display, print_summary
    from broker.cli.signals import Interrupts
    from broker.errors import BrokerError
    from broker.estimates import next_estimate_at
    from broker.states import WORKFLOW_TERMINAL

    startup_over()  # from here on the process may run for hours

    display = Display(sys.stderr, tty=sys.stderr.isatty(), done_before=done_before)
    cancelling = False
    next_estimate = 0.0
    with Interrupts() as signals:
        while True:
            snapshot = tracker.latest(workflow_id)
            if time.monotonic() >= next_estimate and not cancelling:
                started = time.monotonic()
                display.set_estimate(_remaining(engine, workflow_id))
                next_estimate = next_estimate_at(started, time.monotonic(), ESTIMATE_INTERVAL)
            if signals.interrupts >= 2 or signals.terminated:
                display.note(f"stopping now; payloads still running keep running: `broker resume {global_id}` "
                             "re-attaches to them")
                engine.stop()
                return EXIT_INTERRUPTED
            if signals.interrupts == 1 and not cancelling:
                cancelling = True
                display.note("cancelling... press Ctrl-C again to stop at once")
                if snapshot is None or snapshot.state not in WORKFLOW_TERMINAL:
                    try:
                        engine.cancel(workflow_id, f"user:{owner}")
                    except BrokerError as exc:  # the display goes on: the workflow may still end by itself
                        display.note(f"could not cancel: {exc}")
            display.update(snapshot, tracker.state_changes(workflow_id))
            if snapshot is not None and snapshot.state in WORKFLOW_TERMINAL:
                break
            if not engine.writer.is_alive():
                display.clear()
                raise BrokerError("the engine's writer stopped unexpectedly (see the log above)")
            tracker.changed.wait(display.interval)
            tracker.changed.clear()
    display.clear()
    state = print_summary(engine.sessions, workflow_id, wall=display.elapsed(), done_before=done_before,
                          out=sys.stdout)
    if cancelling:
        return EXIT_INTERRUPTED
    return EXIT_OK if state == "succeeded" else EXIT_INVALID


# --------------------------------------------------------------------------------------------- internals

def _remaining(engine: Any, workflow_id: int) -> Any:
    """Seconds left (broker.estimates.Interval) from history, None without any; never stops the display."""
    import datetime as dt

    from broker.persistence.estimates import estimate_workflow

    try:
        with engine.sessions() as s:
            now = dt.datetime.now(dt.timezone.utc)
            est = estimate_workflow(s, workflow_id, now, slots=engine.settings.engine.max_in_flight)
    except Exception:  # an estimate is a nicety: a failed read must not end the run's display
        log.debug("estimate failed", exc_info=True)
        return None
    if est is None:
        return None
    from broker.estimates import Interval

    return Interval(*((t - now).total_seconds() for t in (est.p10, est.p50, est.p90)))


def _text(source: bytes) -> str:
    """The description as text, to store verbatim (the parser accepted UTF-8 or UTF-16)."""
    try:
        return source.decode("utf-8-sig")
    except UnicodeDecodeError:
        return source.decode("utf-16")


def _looks_stored(text: str) -> bool:
    """Whether ``text`` can name a stored workflow (``NAME[@VERSION]``): a path with '/' never does."""
    from broker.errors import ConfigError
    from broker.persistence.stored import parse_ref

    try:
        parse_ref(text)
    except ConfigError:
        return False
    return True


def _stored_source(settings: Any, ref: str) -> tuple[bytes, tuple[str, int]]:
    """The description of a stored workflow and its (name, version). Raises OSError when there is none, so
    that a name nobody stored reads like a file that does not exist."""
    from broker.cli.common import reader
    from broker.errors import NotFound
    from broker.persistence import stored

    name, version = stored.parse_ref(ref)
    try:
        with reader(settings) as sessions, sessions() as s:
            row = stored.get(s, name, version)
            return row.descriptor.encode("utf-8", "surrogatepass"), (row.name, row.version)
    except NotFound as exc:
        raise FileNotFoundError(2, f"no such file, and {exc}") from None
