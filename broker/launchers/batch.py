"""The batch launcher: nodes as batch jobs (SLURM, PBS/Torque, MOAB), submitted once, watched in batches.

Launch (:meth:`BatchLauncher.launch`, or :meth:`~BatchLauncher.launch_bundle` for several members in one
job) is one command on the host: the agent writes each attempt's files and an exclusive launch record,
then the job script is submitted in the same command line. The job carries a deterministic name
(:func:`broker.launchers.jobs.job_token`) and runs in its own directory; when a submission's outcome is
unknown (a lost reply, a timeout), or an attempt turns out to have been prepared before (a broker that
died mid-launch), the scheduler is asked for that name and directory *before* anything is submitted again.
So a node is never submitted twice.

Watching is one poller thread per (host, account); each interval it runs one agent ``probe`` (every
attempt's status file and new reports) and ONE scheduler query (``squeue``), whatever the number of jobs,
plus one history query (``sacct``) when jobs have left the queue without a result. The two views are
reconciled: the elf's status file wins; the scheduler explains what the status file cannot (a job killed at
its time limit, cancelled while pending, lost with its node). A scheduler that does not answer leaves every
job's state unknown, never failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import re
import shlex
import threading
import time
from collections.abc import Sequence
from typing import Any

from broker.description.model import Scheduling
from broker.elf import elf
from broker.errors import ResourceError
from broker.launchers import hostagent
from broker.launchers import jobs as batch_jobs
from broker.launchers.base import LaunchHandle, LaunchRequest, Recovered
from broker.launchers.reconcile import Rules, reconcile, scheduler_name
from broker.launchers.remote import Endpoint
from broker.launchers.remote_launcher import RemoteLauncher, elf_args, payload_env, push_files, session_of
from broker.launchers.tracking import Tracked, Watchlist
from broker.resources.shell import Completed, ShellError

log = logging.getLogger(__name__)

#: polls to wait for a status file once the scheduler says the job ended (shared file systems lag)
SETTLE_POLLS = 2
#: seconds a job may be unknown to a scheduler that answers (and leave no result) before it counts as lost
LOST_AFTER = 600.0
#: submissions of one job tried before giving up (each after looking the job up)
SUBMIT_ATTEMPTS = 3
#: what a comment may hold (node global ids)
_COMMENT_RE = re.compile(r"[A-Za-z0-9_.\-/\[\]@:+]{1,1024}")
_SEP = b"\x1e"


class BatchLauncher(RemoteLauncher):
    """Runs payloads as batch jobs on one host as one account (implements base.Launcher, plus bundles)."""

    CANCEL_OPTIONS = {"signal": False}

    def __init__(self, endpoint: Endpoint, dialect: batch_jobs.Dialect, *, poll_interval: float = 5.0,
                 max_output_bytes: int = elf.DEFAULT_MAX_VALUE_BYTES, lost_after: float = LOST_AFTER,
                 settle_polls: int = SETTLE_POLLS, submit_attempts: int = SUBMIT_ATTEMPTS,
                 submit_backoff: float = 2.0, stage_max_bytes: int = 10 * 1024**3):
        """``poll_interval``, ``lost_after``, ``submit_backoff`` (the first wait before a resubmission, doubled
        each time, at most 10): seconds."""
        super().__init__(endpoint, kind=dialect.name, poll_interval=poll_interval, max_output_bytes=max_output_bytes,
                         stage_max_bytes=stage_max_bytes)
        self.dialect = dialect
        self._rules = Rules(settle_polls, lost_after, scheduler_name(dialect.name))
        self._submit_attempts = submit_attempts
        self._submit_backoff = submit_backoff
        #: job id -> keys of the bundle's members (launched by this launcher)
        self._bundles: dict[str, set[tuple[int, int]]] = {}
        self._lock = threading.Lock()
        #: whether the last scheduler query failed (an outage is logged once)
        self._unreachable = False

    # --------------------------------------------------------------------------------------- launching

    def launch(self, request: LaunchRequest, scheduling: Scheduling | None = None) -> LaunchHandle:
        """Submit one attempt as one job with the node's scheduling profile (host defaults fill the gaps)."""
        workdir = self._remote_workdir(request)
        token = batch_jobs.job_token(request.node_id, request.attempt, workdir)
        spec = batch_jobs.job_spec(self.endpoint.host, scheduling, name=token, comment=self._comment([request]),
                                   job_dir=workdir)
        argv = hostagent.elf_argv(self.endpoint.host.python, self.endpoint.elf_path,
                                  dict(elf_args(request, self._max_output_bytes), workdir=workdir))
        body = ["exec " + batch_jobs.command(argv)]
        started_at = time.time()
        record = self._record(request, started_at, workdir, token)
        item = {"workdir": workdir, "record": record,
                "files": {"payload": request.payload_text, "env.json": json.dumps(payload_env(
                    self.endpoint.host.env, request)), "job.sh": batch_jobs.script(self.dialect.directives(spec), body),
                          **push_files(request)}}
        job_id = self._submit(workdir, token, [item])
        handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=workdir, job_id=job_id,
                              host=self.endpoint.label, started_at=started_at, timeout=request.timeout)
        self._track(handle, session_of(request), batch_jobs.JobRef(job_id, workdir, token))
        return handle

    def launch_bundle(self, requests: Sequence[LaunchRequest], scheduling: Scheduling | None = None,
                      parallel: int | None = None) -> list[LaunchHandle]:
        """Submit several attempts (members of one sweep) as ONE job; one handle per member, same job id.

        ``parallel`` members run at once (default: all), each with the profile's cores and memory; the
        job asks for ``parallel`` times those, and the walltime times the number of waves. In the job the
        agent runs the members' elfs and stops a member whose attempt is cancelled (a cancel file).
        """
        if not requests:
            return []
        first = requests[0]
        parallel = max(1, min(parallel or len(requests), len(requests)))
        waves = -(-len(requests) // parallel)
        root = self.endpoint.ensure()
        job_dir = posixpath.join(root, first.workflow_global_id, ".bundles", f"{first.node_id}-{first.attempt}")
        job_dir = self.endpoint.workdir(job_dir)
        token = batch_jobs.job_token(first.node_id, first.attempt, job_dir)
        spec = batch_jobs.job_spec(self.endpoint.host, scheduling, name=token, comment=self._comment(requests),
                                   job_dir=job_dir, parallel=parallel, waves=waves)
        started_at = time.time()
        items, members, workdirs = [], [], []
        for request in requests:
            workdir = self._remote_workdir(request)
            workdirs.append(workdir)
            members.append(dict(elf_args(request, self._max_output_bytes), workdir=workdir))
            items.append({"workdir": workdir, "record": self._record(request, started_at, job_dir, token, True),
                          "files": {"payload": request.payload_text,
                                    "env.json": json.dumps(payload_env(self.endpoint.host.env, request)),
                                    **push_files(request)}})
        manifest = {"python": self.endpoint.host.python, "elf": self.endpoint.elf_path, "parallel": parallel,
                    "members": members}
        runner = [self.endpoint.host.python, "-I", "-S", self.endpoint.agent_path, "bundle", f"{job_dir}/manifest.json"]
        items.insert(0, {"workdir": job_dir, "record": {"token": token, "started_at": started_at,
                                                        "members": workdirs},
                         "files": {"manifest.json": json.dumps(manifest),
                                   "job.sh": batch_jobs.script(self.dialect.directives(spec),
                                                               ["exec " + batch_jobs.command(runner)])}})
        job_id = self._submit(job_dir, token, items)
        handles = []
        with self._lock:
            self._bundles[job_id] = {(r.node_id, r.attempt) for r in requests}
        for request, workdir in zip(requests, workdirs):
            handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=workdir, job_id=job_id,
                                  host=self.endpoint.label, started_at=started_at, timeout=request.timeout)
            self._track(handle, session_of(request), batch_jobs.JobRef(job_id, job_dir, token, bundle=True))
            handles.append(handle)
        return handles

    def launch_array(self, requests: Sequence[LaunchRequest], scheduling: Scheduling | None = None,
                     throttle: int = 0) -> list[LaunchHandle]:
        """Submit several attempts (members of one sweep) as ONE job array: task ``i`` runs member ``i``.

        Unlike a bundle each member is a task of its own: its own accounting record, its own place in the
        queue, a cancel of its task alone, the scheduler's own throttle (``throttle`` tasks at once, 0: no
        limit). The members' directories are prepared and the array submitted in one command; the array
        carries a deterministic name and directory, so a submission whose outcome is unknown is looked up
        before it is tried again, as a single job's is.
        """
        if not requests:
            return []
        first, variable = requests[0], self.dialect.array_variable
        if variable is None:
            raise ResourceError(f"{self.endpoint.label}: no job arrays on {self.dialect.name}", retryable=False)
        root = self.endpoint.ensure()
        job_dir = self.endpoint.workdir(posixpath.join(root, first.workflow_global_id, ".arrays",
                                                       f"{first.node_id}-{first.attempt}"))
        token = batch_jobs.job_token(first.node_id, first.attempt, job_dir)
        spec = batch_jobs.job_spec(self.endpoint.host, scheduling, name=token, comment=self._comment(requests),
                                   job_dir=job_dir, array=(len(requests), throttle))
        started_at = time.time()
        items, lines, workdirs = [], [], []
        for task, request in enumerate(requests):
            workdir = self._remote_workdir(request)
            workdirs.append(workdir)
            argv = hostagent.elf_argv(self.endpoint.host.python, self.endpoint.elf_path,
                                      dict(elf_args(request, self._max_output_bytes), workdir=workdir))
            lines.append((workdir, batch_jobs.command(argv)))
            items.append({"workdir": workdir, "record": dict(self._record(request, started_at, job_dir, token),
                                                             task=task),
                          "files": {"payload": request.payload_text,
                                    "env.json": json.dumps(payload_env(self.endpoint.host.env, request)),
                                    **push_files(request)}})
        script = batch_jobs.script(self.dialect.directives(spec), batch_jobs.array_body(variable, job_dir, lines))
        items.insert(0, {"workdir": job_dir, "record": {"token": token, "started_at": started_at,
                                                        "members": workdirs}, "files": {"job.sh": script}})
        array_id = self._submit(job_dir, token, items)
        handles = []
        for task, (request, workdir) in enumerate(zip(requests, workdirs)):
            job_id = self.dialect.task_id(array_id, task)
            handle = LaunchHandle(node_id=request.node_id, attempt=request.attempt, workdir=workdir, job_id=job_id,
                                  host=self.endpoint.label, started_at=started_at, timeout=request.timeout)
            self._track(handle, session_of(request), batch_jobs.JobRef(job_id, job_dir, token, task=task))
            handles.append(handle)
        return handles

    def _comment(self, requests: Sequence[LaunchRequest]) -> str:
        # "wf-.../sweep[0]/step:1", "wf-.../sweep[0]/step+99:1" for a bundle of 100 (no '#': sbatch
        # may read the rest of a directive line as a comment)
        comment = session_of(requests[0]) + (f"+{len(requests) - 1}" if len(requests) > 1 else "")
        comment = f"{comment}:{requests[0].attempt}"
        if not _COMMENT_RE.fullmatch(comment):
            raise ResourceError(f"node {requests[0].node_path}: its global id cannot go into a job comment",
                                retryable=False)
        return comment

    @staticmethod
    def _record(request: LaunchRequest, started_at: float, job_dir: str, token: str, bundle: bool = False) -> dict:
        return {"node_id": request.node_id, "attempt": request.attempt, "started_at": started_at,
                "timeout": request.timeout, "session": session_of(request), "job_dir": job_dir, "token": token,
                "bundle": bundle}

    def _track(self, handle: LaunchHandle, session: str | None, job: batch_jobs.JobRef) -> None:
        tracked = self._watch.add(handle, session)
        tracked.extra = job
        self.poller.wake()

    def _submit(self, job_dir: str, token: str, items: list[dict]) -> str:
        """Prepare ``items`` and submit the job in ``job_dir``; look it up before any submission is retried."""
        ep = self.endpoint
        # umask 077: the scheduler's output files (and, through the job's inherited umask, the payload's)
        # are private to the account like the directories they are in.
        submit = (f"umask 077; cd {shlex.quote(job_dir)} || exit 91; "
                  f"{batch_jobs.command(self.dialect.submit('job.sh'))} >submit.out 2>submit.err; rc=$?; "
                  f"printf '\\036'; cat submit.out; cat submit.err >&2; exit $rc")
        line = f"{ep.agent_command('prepare')} || exit 90; {submit}"
        last: Exception | None = None
        look_first = False
        for attempt in range(self._submit_attempts):
            if look_first:
                found = self.lookup(token, job_dir)
                if found is not None:
                    log.info("%s: job %s (%s) was submitted after all: adopted", ep.label, found, token)
                    return found
                # backoff before submitting again (not a wait for a state)
                time.sleep(min(self._submit_backoff * 2.0 ** (attempt - 1), 10.0))
            look_first = True
            self.calls["submit"] += 1
            stdin = json.dumps({"items": items}).encode("utf-8")
            # Every later try comes after a lookup that found nothing: prepare again over what may be there.
            items = [dict(item, replace=True) for item in items]
            try:
                done = ep.shell.run(line, stdin=stdin)
            except ShellError as exc:
                last, look_first = exc, exc.ambiguous  # not ambiguous: nothing ran
                continue
            head, _, tail = done.stdout.partition(_SEP)
            if done.returncode == 90:
                ep.reply("prepare", Completed(done.returncode, head, done.stderr))  # raises unless "exists"
                # Prepared before, by a launch that died or lost its reply: was it submitted then?
                found = self.lookup(token, job_dir)
                if found is not None:
                    log.info("%s: job %s (%s) was submitted before: adopted", ep.label, found, token)
                    return found
                last, look_first = ResourceError("prepared before, never submitted"), False
                continue
            if done.returncode == 91:
                raise ResourceError(f"{ep.label}: job directory {job_dir} is missing: {done.err}", retryable=False)
            try:
                return self.dialect.parse_submit(Completed(done.returncode, tail, done.stderr))
            except batch_jobs.SchedulerUnreachable as exc:
                last = exc
        raise ResourceError(f"{ep.label}: could not submit {token} after {self._submit_attempts} tries: {last}")

    def lookup(self, token: str, job_dir: str) -> str | None:
        """The id of the job named ``token`` running in ``job_dir``, if the scheduler knows one."""
        try:
            jobs = self._query()
        except batch_jobs.SchedulerUnreachable:
            return None
        for job in jobs.values():
            # Torque names an array's tasks "<name>-<index>"; SLURM keeps the name
            named = job.name == token or job.name.startswith(token + "-")
            if named and (job.workdir is None or job.workdir == job_dir):
                return self.dialect.array_of(job.job_id)
        return None

    # -------------------------------------------------------------------------------- the interface

    def _watching(self, handle: LaunchHandle) -> None:
        tracked = self._watch.get(handle)
        if tracked is not None and tracked.extra is None:
            tracked.extra = batch_jobs.JobRef(handle.job_id, handle.workdir, "")

    def _ended_now(self, tracked: Tracked) -> bool:
        if tracked.extra is None:
            tracked.extra = batch_jobs.JobRef(tracked.handle.job_id, tracked.handle.workdir, "")
        return self._look([tracked], final=True)[0]

    def _cancelled(self, handle: LaunchHandle, tracked: Tracked | None, reply: dict[str, Any]) -> None:
        """Cancel the attempt's job (a bundle's only once all its members are)."""
        if reply.get("items") == ["ended"]:
            return  # its payload ended first (the elf's verdict): it keeps its result, the job ends by itself
        job = tracked.extra if tracked is not None else None
        with self._lock:
            members = self._bundles.get(handle.job_id)
            if members is not None or (job is not None and job.bundle):
                keys = members or set()
                done = all((t := self._watch.get_key(k)) is None or t.cancelled or t.ended for k in keys)
                if not keys or not done:
                    self.poller.wake()
                    return  # the job's runner stops this member; the others go on
        result = self.endpoint.shell.run(batch_jobs.command(self.dialect.cancel([handle.job_id])))
        failed = self.dialect.cancel_failed(result)
        if failed is not None:
            raise ResourceError(f"{self.endpoint.label}: {failed}")
        self.poller.wake()

    def recover(self, node_id: int, attempt: int, workdir: str, job_id: str | None) -> Recovered:
        """Finished, running (adopted), absent (never submitted) or lost: by record, job id and token."""
        handle, item = self._first_look(node_id, attempt, workdir, job_id or "")
        record = item.get("record")
        if not item.get("started") or not record:
            return Recovered("absent")
        job_dir, token = record.get("job_dir") or handle.workdir, record.get("token") or ""
        if not job_id and item.get("submitted"):
            try:
                job_id = self.dialect.parse_submit(Completed(0, item["submitted"].encode(), b""))
            except ResourceError:
                job_id = None
        job_id = job_id or (self.lookup(token, job_dir) if token else None)
        if not job_id:
            if item.get("status") and item["status"].get("outcome"):
                job_id = "?"  # ran (its status says so) and left no trace in the queue: judge by the status
            else:
                return Recovered("absent")  # prepared, never submitted: launch() submits it (after a lookup)
        task = record.get("task")
        if isinstance(task, int) and job_id != "?":
            # a task of an array: the submission and the lookup name the array, the queue names the task
            job_id = self.dialect.task_id(self.dialect.array_of(job_id), task)
        handle = dataclasses.replace(handle, job_id=job_id, started_at=record.get("started_at", 0.0),
                                     timeout=record.get("timeout"))
        tracked = Tracked(handle, record.get("session"))
        tracked.extra = batch_jobs.JobRef(job_id, job_dir, token, bool(record.get("bundle")),
                                          task if isinstance(task, int) else None)
        return self._recovered(tracked, self._look([tracked], final=False, items=[item])[0])

    def _watch_from_now(self, tracked: Tracked) -> None:
        self._track(tracked.handle, tracked.session, tracked.extra)

    # ------------------------------------------------------------------------------------------ polling

    def _query(self) -> dict[str, batch_jobs.JobInfo]:
        self.calls["query"] += 1
        try:
            done = self.endpoint.shell.run(batch_jobs.command(self.dialect.query(self.endpoint.account.login)))
        except ShellError as exc:
            raise batch_jobs.SchedulerUnreachable(str(exc)) from None
        return self.dialect.parse_query(done)

    def _history(self, job_ids: Sequence[str]) -> dict[str, batch_jobs.JobInfo]:
        line = self.dialect.history(self.endpoint.account.login, sorted(job_ids))
        if line is None:
            return {}
        self.calls["history"] += 1
        try:
            return self.dialect.parse_history(self.endpoint.shell.run(line))
        except (batch_jobs.SchedulerUnreachable, ShellError) as exc:
            log.debug("%s: no job history: %s", self.endpoint.label, exc)
            return {}

    def _look(self, tracked: list[Tracked], final: bool, items: list[dict] | None = None) -> list[bool]:
        """Probe (unless given), query the scheduler once, reconcile; True per attempt that has ended."""
        if items is None:
            try:
                items = self._probe(tracked, scan=not final)
            except ResourceError as exc:
                log.warning("%s: cannot read %d status files: %s", self.endpoint.label, len(tracked), exc)
                return [False] * len(tracked)
        try:
            jobs: dict[str, batch_jobs.JobInfo] | None = self._query()
        except batch_jobs.SchedulerUnreachable as exc:
            # once per outage at WARNING: a scheduler down for an hour must not write 700 warnings
            log.log(logging.DEBUG if self._unreachable else logging.WARNING, "%s: %s: job states unknown "
                    "until it answers", self.endpoint.label, exc)
            self._unreachable, jobs = True, None
        else:
            if self._unreachable:
                log.warning("%s: the %s scheduler answers again", self.endpoint.label, self.dialect.name)
            self._unreachable = False
        if jobs is not None:
            missing = {t.extra.job_id for t, item in zip(tracked, items)
                       if t.extra.job_id not in jobs and not (item.get("status") or {}).get("outcome")
                       and t.extra.job_id not in ("", "?")}
            if missing:
                jobs.update(self._history(missing))
        ended = []
        for t, item in zip(tracked, items):
            if not final:
                Watchlist.add_reports(t, item)
            ended.append(reconcile(t, item, jobs, final=final, rules=self._rules))
        return ended

    def _poll_ended(self, tracked: list[Tracked]) -> list[bool]:
        return self._look(tracked, final=False)

__all__ = ["BatchLauncher"]
