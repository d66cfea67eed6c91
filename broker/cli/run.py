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
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from broker.cli import EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_USAGE, add_db_option
from broker.cli.common import local_time, not_found_is_usage, owner_name, plural
from broker.printable import printable

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``run`` and ``resume`` commands."""
    run_parser = subparsers.add_parser(
        "run", parents=[common], help="run a workflow in this process, with live progress",
        description="Run a workflow in this process until it ends, showing progress. If the database holds an "
                    "unfinished workflow of yours with the same description, it is resumed instead of submitted "
                    "again. Exit 0: succeeded; 1: failed, cancelled or invalid description; 2: unreadable file; "
                    "3: error (database locked by another broker...); 130: interrupted. Ctrl-C cancels the "
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
        args.workdir = _recorded_work_root(settings, owner, digest, spec.arguments)
    tracker = Tracker()
    with _running_engine(settings, args, tracker, "run") as engine:
        found = _unfinished(engine.sessions, owner, digest, spec.arguments)
        if found is not None:
            done_before = _announce_resume(engine.sessions, found)
            accepted = engine.track(found)
        else:
            try:
                accepted = engine.submit(spec, descriptor, owner, origin=origin)
            except LimitExceeded as exc:  # refused content, like an invalid description ([limits] max_nodes_per_user)
                print(f"broker: {printable(str(exc))}", file=sys.stderr)
                return EXIT_INVALID
            done_before = 0
            came = f" from stored workflow {origin[0]}@{origin[1]}" if origin else ""
            print(f"submitted workflow {accepted.global_id} (id {accepted.workflow_id}): {printable(spec.name)}"
                  + printable(came), flush=True)
        return follow(engine, accepted.workflow_id, accepted.global_id, tracker, owner, done_before)


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
    with _running_engine(settings, args, tracker, "resume") as engine:
        done_before = _announce_resume(engine.sessions, target.workflow_id)
        accepted = engine.track(target.workflow_id)
        return follow(engine, accepted.workflow_id, accepted.global_id, tracker, owner, done_before)


# ------------------------------------------------------------------------------------------------ follow

class Interrupts:
    """SIGINT and SIGTERM handlers that only count: the main loop acts on the counts."""

    def __init__(self) -> None:
        self.interrupts = 0
        self.terminated = False
        self._previous: dict[int, Any] = {}

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        self.interrupts += 1

    def _on_terminate(self, signum: int, frame: Any) -> None:
        self.terminated = True

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_terminate)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def follow(engine: Any, workflow_id: int, global_id: str, tracker: Any, owner: str, done_before: int) -> int:
    """Show progress until the workflow ends (or the user stops it); print the summary; return the exit code."""
    from broker.cli.progress import ESTIMATE_INTERVAL, Display, print_summary
    from broker.errors import BrokerError
    from broker.states import WORKFLOW_TERMINAL

    display = Display(sys.stderr, tty=sys.stderr.isatty(), done_before=done_before)
    cancelling = False
    estimated = 0.0
    with Interrupts() as signals:
        while True:
            snapshot = tracker.latest(workflow_id)
            if time.monotonic() - estimated >= ESTIMATE_INTERVAL and not cancelling:
                estimated = time.monotonic()
                display.set_estimate(_remaining(engine, workflow_id))
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


@contextmanager
def _running_engine(settings: Any, args: argparse.Namespace, tracker: Any, command: str) -> Iterator[Any]:
    """The started engine for this command, stopped on the way out whatever happened."""
    from broker.engine import Engine

    # The command line is the invoking user's own run: its local payloads run as that account, whatever the
    # accounts mapping says (it maps users of a shared `broker serve`).
    settings = settings.replace("engine", run_as_broker_account=True)
    engine = Engine(settings, listeners=[tracker], workdir=getattr(args, "workdir", None), service=command).start()
    try:
        yield engine
    finally:
        engine.stop()
        if engine.unsent_at_stop:
            # outbox rows: one per event and destination
            left = plural(engine.unsent_at_stop, "event message")
            print(f"broker: {left} not yet published on the bus after waiting up "
                  f"to {settings.events.exit_drain_timeout:g} s ([events] exit_drain_timeout); the next broker "
                  "started on this database publishes them", file=sys.stderr)


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


def _unfinished(sessions: Any, owner: str, digest: str,
                arguments: tuple[tuple[str, str], ...] | None = None) -> int | None:
    """The newest unfinished workflow of ``owner`` with this descriptor digest and these arguments, if any."""
    from sqlalchemy import select

    from broker.persistence.models import User, Workflow

    wanted = [list(pair) for pair in arguments] if arguments else None
    with sessions() as s:
        rows = s.execute(select(Workflow.id, Workflow.arguments).join(User, User.id == Workflow.owner_id)
                         .where(User.name == owner, Workflow.descriptor_sha256 == digest,
                                Workflow.state.in_(("accepted", "running")))
                         .order_by(Workflow.id.desc())).all()
    # the same description with other arguments is another workflow, not one to resume
    return next((row.id for row in rows if (row.arguments or None) == wanted), None)


def _recorded_work_root(settings: Any, owner: str, digest: str,
                        arguments: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """The work root of the unfinished workflow ``broker run`` will resume, if there is one (else None: the
    configured root). A database that does not exist yet, or that the engine must migrate first, has none."""
    from broker.cli.common import reader
    from broker.errors import DatabaseError, NotFound
    from broker.persistence.models import Workflow

    try:
        with reader(settings) as sessions:
            found = _unfinished(sessions, owner, digest, arguments)
            if found is None:
                return None
            with sessions() as s:
                return s.get(Workflow, found).work_root
    except (NotFound, DatabaseError):
        return None


def _announce_resume(sessions: Any, workflow_id: int) -> int:
    """Print ``resuming workflow ... N of M nodes done``; returns N (not part of this run's rate).

    M is what the workflow will run, its sweeps not expanded yet counted as they will expand (as ``broker
    validate`` counts), so it agrees with the summary at the end.
    """
    from broker.cli.common import done_total, node_counts
    from broker.cli.progress import planned_total
    from broker.persistence.models import Workflow

    with sessions() as s:
        wf = s.get(Workflow, workflow_id)
        counts = node_counts(s, [workflow_id])[workflow_id]
        done, _ = done_total(counts)
        total, note = planned_total(s, workflow_id, counts)
    print(f"resuming workflow {wf.global_id} (submitted {local_time(wf.submitted_at)}): "
          f"{done} of {plural(total, 'node')} done" + (f" ({note})" if note else ""), flush=True)
    return done

