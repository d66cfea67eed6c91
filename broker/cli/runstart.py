"""Starting ``broker run`` and ``broker resume``: the engine in this process, or, while another broker holds the
database, handing the workflow to it (:mod:`broker.cli.handoff`); finding the unfinished workflow a run
resumes, and saying so.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from broker.cli import EXIT_ERROR
from broker.cli.common import local_time, plural
from broker.printable import printable


def started(settings: Any, args: Any, tracker: Any, command: str, *, handing: dict[str, Any]) -> Any:
    """The started engine for this command; or, while another broker holds the database, the exit code of
    handing the workflow to it (broker.cli.handoff). ``--detach`` is only for handing over."""
    from broker.cli.handoff import RUN_HERE, hand_over, readable
    from broker.errors import BrokerLocked
    from broker.persistence.lock import broker_running

    while True:
        if getattr(args, "detach", False) and not broker_running(settings.database_url()):
            print("broker: --detach hands the workflow to the broker holding the database, and none does: run "
                  "without --detach, or start `broker serve`", file=sys.stderr)
            return EXIT_ERROR
        try:
            return start_engine(settings, args.workdir, tracker, command)
        except BrokerLocked as exc:
            locked = str(exc)
        if not readable(settings):
            continue  # the holder went away before the database could be read: run here
        code = hand_over(settings, args, kind=handing["kind"], owner=handing["owner"], payload=handing["payload"],
                         workflow_gid=_handed_gid(settings, handing), name=handing["name"], locked=locked,
                         announce=_announce_handed,
                         start_engine=lambda root: start_engine(settings, args.workdir or root, tracker, command))
        if code != RUN_HERE:
            return code


def _handed_gid(settings: Any, handing: dict[str, Any]) -> str | None:
    """The global id a hand-over request names: the resumed workflow's, or one reserved for a new one; a run of
    a file whose unfinished workflow is in the database becomes a resume of it."""
    from broker.persistence import requests

    if handing["kind"] == "resume":
        return handing["gid"]
    from broker.cli.common import reader
    from broker.persistence.models import Workflow

    with reader(settings) as sessions:
        found = unfinished(sessions, handing["owner"], handing["digest"], handing["arguments"])
        if found is not None:
            with sessions() as s:
                gid = s.get(Workflow, found).global_id
            handing.update(kind="resume", payload={"workflow_id": found}, name=None)
            return gid
    return requests.reserve_global_id()


def _announce_handed(sessions: Any, workflow_id: int, global_id: str, name: str | None) -> int:
    """What a run prints once its workflow is taken: submitted (a new one), or resuming; nodes done before."""
    if name is None:
        return announce_resume(sessions, workflow_id)
    print(f"submitted workflow {global_id} (id {workflow_id}): {printable(name)}", flush=True)
    return 0


def then_handed(engine: Any, code: int) -> int:
    """After this run's own workflow: keep the database while workflows handed to it run (not after a stop)."""
    from broker.cli.handoff import serve_handed

    if engine.writer is not None and engine.writer.is_alive():
        serve_handed(engine)
    return code


def start_engine(settings: Any, workdir: str | None, tracker: Any, command: str) -> Any:
    """Start the engine of a run or resume; raises BrokerLocked while another broker holds the database."""
    from broker.engine import Engine

    # The command line is the invoking user's own run: its local payloads run as that account, whatever the
    # accounts mapping says (it maps users of a shared `broker serve`).
    settings = settings.replace("engine", run_as_broker_account=True)
    return Engine(settings, listeners=[tracker], workdir=workdir, service=command).start()


@contextmanager
def stopping(engine: Any, settings: Any) -> Iterator[Any]:
    """Stop the engine on the way out, whatever happened."""
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


def unfinished(sessions: Any, owner: str, digest: str,
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


def recorded_work_root(settings: Any, owner: str, digest: str,
                        arguments: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """The work root of the unfinished workflow ``broker run`` will resume, if there is one (else None: the
    configured root). A database that does not exist yet, or that the engine must migrate first, has none."""
    from broker.cli.common import reader
    from broker.errors import DatabaseError, NotFound
    from broker.persistence.models import Workflow

    try:
        with reader(settings) as sessions:
            found = unfinished(sessions, owner, digest, arguments)
            if found is None:
                return None
            with sessions() as s:
                return s.get(Workflow, found).work_root
    except (NotFound, DatabaseError):
        return None


def announce_resume(sessions: Any, workflow_id: int) -> int:
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

