"""The engine: builds the actors, starts them in dependency order, stops them in reverse.

Start: database lock (PostgreSQL: the lease) -> database -> writer (and the outbox relay) -> worker pools ->
monitoring -> staging -> submission -> clock. Stop: the reverse, except that the relay stops after the writer:
every change already sent is committed, and what the writer committed last is in the outbox for the relay to
publish. Running payloads are left running on stop: a restarted engine re-attaches to them.

Used by ``broker run`` (one workflow, in-process) and ``broker serve`` (every workflow, as a service).
Those commands name themselves (``service``): the engine then records a SERVICE event when it has started
and another as the writer's last change when it stops, so that bus consumers see brokers come and go.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pykka
from sqlalchemy import select

from broker.config import Settings, default_state_dir
from broker.controllers.messages import Peers, Pushed, Quiesce, Tick
from broker.controllers.monitoring import MonitoringController
from broker.controllers.staging import StagingController
from broker.controllers.submission import SubmissionController
from broker.errors import BrokerError
from broker.persistence.changes import (Accepted, CancelNodes, CancelWorkflow, DeleteWorkflows, Deleted, Note,
                                        Rejected, Restart, Submit, Track)
from broker.persistence.db import session_factory, writer_engine
from broker.persistence.lock import BrokerLock
from broker.persistence.models import Workflow
from broker.persistence.opening import open_database
from broker.persistence.progress import ProgressBoard
from broker.persistence.store import Store
from broker.persistence.writer import Listener, Subscribe, Writer
from broker.states import WorkflowState
from broker.workers.context import PlanCache, WorkerContext
from broker.workers.factory import WORKER_CLASSES
from broker.workers.pool import WorkerPool

log = logging.getLogger(__name__)

#: seconds to wait for the writer's answer to a submission before giving up
SUBMIT_TIMEOUT = 120.0
#: commands whose engine waits at stop for the outbox to drain ([events] exit_drain_timeout)
EXIT_DRAIN_COMMANDS = ("run", "resume")


class Clock(threading.Thread):
    """Tells every controller the time at a fixed interval (retry timers, control and progress polls)."""

    def __init__(self, interval: float, targets: Iterable[pykka.ActorRef[Any]]):
        super().__init__(name="broker-clock")
        self.interval = interval
        self.targets = list(targets)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            now = time.time()
            for ref in self.targets:
                try:
                    ref.tell(Tick(now))
                except pykka.ActorDeadError:
                    pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Engine:
    def __init__(self, settings: Settings, *, launcher: Any = None, listeners: Iterable[Listener] = (),
                 workdir: str | Path | None = None, all_workflows: bool = False,
                 on_lease_lost: Callable[[str], None] | None = None, service: str | None = None,
                 push_url: str | None = None, lease_epoch: int | None = None):
        """``all_workflows``: serve every workflow (``broker serve``); otherwise only those submitted or
        tracked through this engine (``broker run``), and control commands for others are refused.
        ``on_lease_lost``: called with one line when another broker took over the database's lease
        (PostgreSQL); by default the process prints it and exits 3 at once, writing nothing more.
        ``service``: the command running the engine (serve, run, resume), named in its SERVICE events; None
        (tests, tools) records none. ``push_url``: the core service's URL elves on hosts with push="true" report
        to (``broker serve``); None: attempts report through their files only. ``lease_epoch``: the only
        PostgreSQL lease epoch the engine may claim (a standby's, judged free), else its start raises BrokerLocked
        at once; None: any, waiting for a holder that does not renew."""
        self.settings = settings
        self.push_url = push_url
        self.lease_epoch = lease_epoch
        self.on_lease_lost = on_lease_lost
        self.all_workflows = all_workflows
        #: each workflow's committed progress, for the API's status reads
        self.progress = ProgressBoard()
        self.listeners = [self.progress, *listeners]
        self.workdir = Path(workdir or settings.engine.workdir or default_state_dir() / "work").absolute()
        self._launcher = launcher
        self._started = False
        self.service = service
        #: outbox rows the relay left unsent when the engine stopped (None: no bus, or not known)
        self.unsent_at_stop: int | None = None
        #: whether the start's SERVICE event was sent (then the stop's is too)
        self._announced = False
        # built by start() in this order, and stopped in reverse by stop(); None until then
        self.lock: BrokerLock | None = None
        self.db: Any = None
        #: the writer's (broker.persistence.db.writer_engine: on SQLite, db itself)
        self.writer_db: Any = None
        #: session factory for reads (every write goes through the writer)
        self.sessions: Any = None
        self.resources: Any = None
        #: the launcher of each (host, account), made from the resources
        self.launchers: Any = None
        self.ctx: WorkerContext | None = None
        self.store: Store | None = None
        self.relay: Any = None
        self.writer: pykka.ActorRef[Any] | None = None
        self.pools: dict[str, WorkerPool] = {}
        self.monitoring: pykka.ActorRef[Any] | None = None
        self.staging: pykka.ActorRef[Any] | None = None
        self.submission: pykka.ActorRef[Any] | None = None
        self.clock: Clock | None = None
        #: applies the requests of other processes (broker.persistence.requests)
        self.applier: Any = None

    # ---------------------------------------------------------------------------------------- start

    def start(self) -> Engine:
        settings = self.settings
        from broker.persistence.lease import exit_at_once

        self.lock = lock = BrokerLock(settings.database_url(), settings.engine,
                                      role="broker serve" if self.all_workflows else "broker run",
                                      on_lost=self.on_lease_lost or exit_at_once, epoch=self.lease_epoch)
        lock.acquire()
        try:
            # named as the lease's holder: a broker taking the lease over after it expired ends these connections
            self.db = open_database(settings, auto_migrate=True, application_name=lock.holder_name)
            self.sessions = session_factory(self.db)
            from broker.persistence.upkeep import warn_if_no_autovacuum

            warn_if_no_autovacuum(self.db)
            if self._launcher is None:
                from broker.launchers.registry import new_local_launcher

                self._launcher = new_local_launcher(settings, str(self.workdir))
            self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.resources = self._resources()
            from broker.launchers.registry import Launchers

            self.launchers = Launchers(self.resources, local_launcher=self._launcher, local_root=str(self.workdir))
            if self.resources.switches_accounts():
                from broker.runas import check_traversable

                # payloads started as other accounts reach their directories through the work root
                check_traversable(self.workdir)
            self.ctx = WorkerContext(settings=settings, session_factory=self.sessions, plans=PlanCache(self.sessions),
                                     workdir=self.workdir, resources=self.resources, launchers=self.launchers,
                                     all_workflows=self.all_workflows, push_url=self.push_url, lease=lock.lease)
            # every commit checks, in its own transaction, that the lease is still this broker's
            self.writer_db = writer_engine(self.db, settings, application_name=lock.holder_name)
            self.store = Store(session_factory(self.writer_db), limits=settings.limits, guard=lock.guard,
                               publishing=settings.events.publishing, work_root=str(self.workdir))
            # the outbox relay (None without [events] url) is woken by every commit, as a writer listener
            self.relay = None
            if settings.events.url:
                from broker.events.relay import OutboxRelay  # stomp.py and the documents: only with a bus

                # a command that exits when its workflow is done waits for its events to reach the bus
                self.relay = OutboxRelay.from_settings(settings.events, self.sessions,
                                                       exit_drain=self.service in EXIT_DRAIN_COMMANDS)
            self.writer = writer = Writer.start(self.store, [*self.listeners, self.relay.wake] if self.relay
                                                else self.listeners)
            if self.relay is not None:
                self.relay.start()
            sizes = settings.engine
            self.pools = {kind: WorkerPool(kind, cls, getattr(sizes, f"{kind}_workers"), self.ctx)
                          for kind, cls in WORKER_CLASSES.items()}
            self.monitoring = monitoring = MonitoringController.start(writer, self.pools, self.ctx)
            self.staging = staging = StagingController.start(writer, self.pools)
            self.submission = submission = SubmissionController.start(writer, self.pools, self.ctx)
            peers = Peers({"submission": submission, "staging": staging, "monitoring": monitoring})
            for ref in (submission, staging, monitoring):
                ref.tell(peers)
            writer.tell(Subscribe(submission, admits=True))
            # monitoring acts on a commit's kills and recoveries only: not woken by the others
            writer.tell(Subscribe(monitoring, only=("kill", "resume")))
            self.clock = Clock(settings.engine.tick_interval, (submission, monitoring, staging))
            self.clock.start()
            self._announce("started")  # first: the SERVICE event goes to the writer before anything else
            from broker.applier import Applier
            from broker.persistence.lease import Holder

            self.applier = Applier(self, lock.holder_name or Holder.me(lock.role).text)
            self.applier.announce()
            self.applier.start()
        except BaseException:
            self._stop_actors()
            lock.release()
            raise
        self._started = True
        return self

    def _announce(self, what: str) -> None:
        """Send the writer this broker's SERVICE event (started / stopped), when the command named itself."""
        if self.service is None:
            return
        import os
        import socket

        from broker.events.types import EventType

        host, pid = socket.gethostname(), os.getpid()
        self.note(None, EventType.SERVICE.value, "broker", f"broker {self.service} {what} on {host} (pid {pid})",
                  {"what": what, "command": self.service, "host": host, "pid": pid})
        self._announced = what == "started"

    def _resources(self) -> Any:
        """The host catalogue and accounts (the launchers per host are made from them)."""
        from broker.resources import Resources
        from broker.resources.accounts import load_table

        with self.sessions() as s:
            accounts = load_table(s)
        return Resources(self.settings, accounts=accounts)

    # -------------------------------------------------------------------------------------- requests

    def _running(self) -> pykka.ActorRef[Any]:
        """The writer, which every request goes through; BrokerError before start()."""
        if self.writer is None:
            raise BrokerError("the engine is not running")
        return self.writer

    def _ask(self, change_factory: Callable[[Any], Any], timeout: float = SUBMIT_TIMEOUT) -> Any:
        """Send the writer a change built with a reply future; its answer once committed.

        Raises the error that refused the change (BrokerError with the writer's reason when it was no error)."""
        future: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self._running().tell(change_factory(future))
        answer = future.get(timeout=timeout)
        if isinstance(answer, Rejected):
            raise answer.error if isinstance(answer.error, BrokerError) else BrokerError(answer.reason)
        return answer

    def submit(self, spec: Any, descriptor: str, owner: str, **kw: Any) -> Accepted:
        """Store a workflow (durably: committed when this returns) and start running it."""
        from broker.description.model import to_json

        plan = to_json(spec)  # here, not in the writer (Submit.plan)
        return self._ask(lambda f: Submit(spec=spec, descriptor=descriptor, owner=owner, reply_to=f, plan=plan, **kw))

    def track(self, workflow_id: int) -> Accepted:
        """Resume an unfinished workflow: re-attach to its running attempts and go on."""
        return self._ask(lambda f: Track(workflow_id, reply_to=f))

    def track_all(self) -> list[int]:
        """Resume every unfinished workflow in the database (``broker serve``)."""
        with self.sessions() as s:
            ids = s.execute(select(Workflow.id).where(
                Workflow.state.in_([WorkflowState.ACCEPTED.value, WorkflowState.RUNNING.value]))
                .order_by(Workflow.id)).scalars().all()
        for workflow_id in ids:
            self.track(workflow_id)
        return list(ids)

    def cancel(self, workflow_id: int, actor: str) -> Accepted:
        """Cancel a workflow (its running attempts are killed); returns once committed."""
        return self._ask(lambda f: CancelWorkflow(workflow_id, actor, reply_to=f))

    def cancel_nodes(self, node_ids: Iterable[int], actor: str) -> Accepted:
        """Cancel nodes of one workflow (their dependants are skipped); returns once committed."""
        return self._ask(lambda f: CancelNodes(tuple(node_ids), actor, reply_to=f))

    def restart(self, workflow_id: int, actor: str, node_ids: tuple[int, ...] | None = None) -> Accepted:
        """Give failed, cancelled and skipped nodes (all, or ``node_ids`` and their dependants) a fresh attempt."""
        return self._ask(lambda f: Restart(workflow_id, actor, node_ids, reply_to=f))

    def delete_workflows(self, change: DeleteWorkflows) -> Deleted:
        """Delete finished workflows and record what went (see DeleteWorkflows); returns once committed."""
        return self._ask(lambda f: dataclasses.replace(change, reply_to=f))

    def note(self, workflow_id: int | None, type: str, actor: str, message: str,
             properties: dict[str, Any] | None = None) -> None:
        """Record an event that changes no state (an admin action...); committed with the writer's next batch."""
        self._running().tell(Note(workflow_id=workflow_id, type=type, actor=actor, message=message,
                                    properties=properties))

    def pushed(self, node_id: int, attempt: int, *, progress: tuple[float, str | None] | None,
               outputs: tuple[tuple[str, Any], ...], result: Any, receipt: Any) -> None:
        """Hand what an elf pushed for its attempt to the monitoring controller, which takes it as what it reads
        from the attempt's files; ``receipt`` learns when it is committed (see controllers.messages.Pushed)."""
        if self.monitoring is None:
            raise BrokerError("the engine is not running")
        self.monitoring.tell(Pushed(node_id, attempt, progress, outputs, result, receipt))

    def forget(self, workflow_id: int) -> None:
        """Drop what the workers cached of a workflow that was deleted (its plan)."""
        if self.ctx is not None:
            self.ctx.plans.forget(workflow_id)

    def remove_remote_workdir(self, host: str, owner: str, global_id: str) -> None:
        """Remove a workflow's work directory on a remote catalogue host, as its owner's account there."""
        if self.launchers is None:
            raise BrokerError("the engine is not running")
        self.launchers.remove_workflow(host, owner, global_id)

    def is_remote(self, host: str) -> bool:
        """Whether ``host`` (as a node row holds it: ``login@name`` or a name) is a remote catalogue host, whose
        attempts' files are on that host and not on this machine."""
        if self.resources is None:
            return False
        try:
            return self.resources.catalogue.get(host.rpartition("@")[2]).launcher != "local"
        except BrokerError:
            return False

    def output_tail(self, host: str, owner: str, workdir: str, name: str, max_bytes: int) -> bytes | None:
        """The end of a remote attempt's stdout or stderr (``host`` as a node row holds it, ``login@name`` or a
        name), read on its host as its owner's account; None on local hosts or when it cannot be read."""
        if self.launchers is None:
            return None
        try:
            return self.launchers.tail(host.rpartition("@")[2], owner, workdir, name, max_bytes)
        except BrokerError:
            return None

    # ----------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop every actor in reverse start order; the writer commits what it was sent before it stops."""
        if not self._started:
            return
        self._started = False
        try:
            self._stop_actors()
        finally:
            assert self.lock is not None
            self.lock.release()

    def _stop_actors(self) -> None:
        """Stop in an order in which no message reaches a stopped actor: the clock; the controllers quiesced
        (they start no new work, still record answers); the workers (work under way ends, queued work is
        dropped: its intent is in the database); then the controllers, which record the last answers with
        the writer, stopped last so that it commits them. The request applier goes first: nothing new is taken."""
        if self.applier is not None:
            self.applier.stop()
        if self.clock is not None:
            self.clock.stop()
        controllers = [ref for ref in (self.submission, self.staging, self.monitoring) if ref is not None]
        for ref in controllers:
            try:
                ref.tell(Quiesce())
            except pykka.ActorDeadError:  # failed to start: nothing to quiesce
                pass
        for pool in self.pools.values():
            pool.closing.set()  # from now on a dispatch is dropped, even one a controller makes before Quiesce
        for pool in self.pools.values():
            pool.stop()
        for ref in controllers:
            ref.stop()
        if self.launchers is not None:
            self.launchers.close()  # pollers; remote payloads and jobs keep running
        if self.resources is not None:
            self.resources.close()  # SSH connections
        if self.writer is not None:
            if self._announced:
                self._announce("stopped")  # the writer's last change
            self.writer.stop()
        if self.relay is not None:
            # after the writer: what it committed last (final states, the SERVICE event) is in the outbox
            # publishes what is left for at most [events] stop_timeout (exit_drain_timeout: run, resume)
            self.unsent_at_stop = self.relay.stop()
        if self._launcher is not None:
            self._launcher.close()
        if self.writer_db is not None and self.writer_db is not self.db:
            self.writer_db.dispose()
        if self.db is not None:
            self.db.dispose()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
