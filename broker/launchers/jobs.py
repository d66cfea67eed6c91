"""Batch jobs as the batch launchers see them: the job specification, the scheduler's view, the dialect seam.

A :class:`Dialect` turns a :class:`JobSpec` into scheduler directives and knows the scheduler's commands
and their outputs (SLURM, PBS/Torque, MOAB). Every value that reaches a script or a command line is
checked here against a strict pattern (:func:`token`) and quoted: a profile can never add a line, an
option or a shell word of its own.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from broker.description.model import Scheduling
from broker.errors import ResourceError
from broker.resources.catalogue import BatchOptions, Host
from broker.resources.shell import Completed

#: normalised job states
PENDING = "PENDING"        # queued, held, configuring
RUNNING = "RUNNING"        # running, completing, suspended
COMPLETED = "COMPLETED"    # ended with exit code 0
FAILED = "FAILED"          # ended with a non-zero exit code
CANCELLED = "CANCELLED"    # cancelled (by the broker or someone else)
TIMEOUT = "TIMEOUT"        # killed at its time limit
LOST = "LOST"              # node failure, preemption, boot failure...
ENDED = frozenset({COMPLETED, FAILED, CANCELLED, TIMEOUT, LOST})

_TOKEN_RE = re.compile(r"[A-Za-z0-9_.\-+:@,]{1,128}")
_DIRECTIVE_RE = re.compile(r"[a-z][a-z0-9\-]{0,31}")
#: the task index in a Torque/PBS array task's id (``1098[3].server``)
_TASK_RE = re.compile(r"\[[0-9]+\]")


class SchedulerUnreachable(ResourceError):
    """Raised when the batch scheduler does not answer: every job's state is then unknown, never failed."""


class SubmitRejected(ResourceError):
    """Raised when the scheduler refused a job (``retryable`` when the refusal may pass, e.g. a full queue)."""


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the scheduler says about one job."""

    job_id: str
    name: str
    #: one of the normalised states above
    state: str
    #: the job's working directory, when the scheduler reports it
    workdir: str | None = None
    exit_code: int | None = None
    #: the scheduler's own state word (and reason), for messages
    raw: str = ""


@dataclass(frozen=True, slots=True)
class JobRef:
    """The job an attempt belongs to (a bundle's members share one)."""

    job_id: str
    #: the job's directory (the attempt's own work directory unless it is a bundle member or an array task)
    job_dir: str
    token: str
    bundle: bool = False
    #: the attempt's task index when it is one task of a job array (``job_id`` is then the task's own id)
    task: int | None = None

    @property
    def err_file(self) -> str:
        """The scheduler's stderr file of this job (of this task, for an array)."""
        return f"{self.job_dir}/job.err" if self.task is None else f"{self.job_dir}/task-{self.task}.err"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One batch job: what the directives say."""

    #: job name, also the idempotency token the broker looks up
    name: str
    #: the node global id(s), for people reading the queue
    comment: str
    #: the job's directory: its script, its scheduler output files, its submission record
    job_dir: str
    queue: str | None = None
    nodes: int | None = None
    #: CPUs for the job's one task
    cores: int | None = None
    #: bytes
    memory: int | None = None
    #: seconds
    walltime: float | None = None
    account: str | None = None
    #: extra directives (name, value or None), already checked against the host's allowlist
    directives: tuple[tuple[str, str | None], ...] = ()
    #: a job array: (number of tasks, tasks that may run at once or 0 for no throttle)
    array: tuple[int, int] | None = None


def job_token(node_id: int, attempt: int, job_dir: str) -> str:
    """The deterministic name of an attempt's job: ``wb-<node>-<attempt>-<4 hex of its job directory>``.

    Database ids alone repeat across brokers sharing an account; the job directory (which holds the
    workflow's random global id) does not, and the scheduler's working directory confirms a match.
    """
    return f"wb-{node_id}-{attempt}-{hashlib.sha1(job_dir.encode()).hexdigest()[:4]}"


def token(value: str, what: str) -> str:
    """``value`` if it is a plain scheduler token, else ResourceError (never reaches a script)."""
    if not _TOKEN_RE.fullmatch(value):
        raise ResourceError(f"{what} {value!r} is not a plain scheduler value (letters, digits, _ . - + : @ ,)",
                            retryable=False)
    return value


def job_spec(host: Host, scheduling: Scheduling | None, *, name: str, comment: str, job_dir: str,
             parallel: int = 1, waves: int = 1, array: tuple[int, int] | None = None) -> JobSpec:
    """The job for a scheduling profile on ``host``: host defaults filled in, every value checked.

    ``parallel`` members run at once and ``waves`` after one another (bundles): cores and memory are
    multiplied by the first, walltime by the second.
    """
    scheduling = scheduling or Scheduling()
    batch = host.batch or BatchOptions()
    queue = scheduling.queue or batch.default_queue
    if queue is not None:
        token(queue, "queue")
        if batch.queues and queue not in batch.queues:
            raise ResourceError(f"host '{host.name}' has no queue '{queue}' (queues: {', '.join(batch.queues)})",
                                retryable=False)
    if scheduling.account is not None:
        token(scheduling.account, "account")
    directives = []
    for key, value in scheduling.directives:
        if not _DIRECTIVE_RE.fullmatch(key) or key not in batch.directives:
            allowed = ", ".join(batch.directives) or "none"
            raise ResourceError(f"host '{host.name}' does not allow directive '{key}' (allowed: {allowed})",
                                retryable=False)
        directives.append((key, None if value is None else token(value, f"directive {key}")))
    cores = (scheduling.cores or 1) * parallel if (scheduling.cores or parallel > 1) else None
    memory = scheduling.memory * parallel if scheduling.memory else None
    walltime = scheduling.walltime * waves if scheduling.walltime else None
    return JobSpec(name=token(name, "job name"), comment=comment, job_dir=job_dir, queue=queue,
                   nodes=scheduling.nodes, cores=cores, memory=memory, walltime=walltime,
                   account=scheduling.account, directives=tuple(directives), array=array)


def hms(seconds: float) -> str:
    """``[D-]HH:MM:SS`` rounded up to whole seconds (SLURM rounds it up to minutes itself)."""
    total = max(1, math.ceil(seconds))
    days, rest = divmod(total, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


def mebibytes(size: int) -> int:
    """Bytes rounded up to whole MiB (what every scheduler takes)."""
    return max(1, math.ceil(size / 1024**2))


def script(directives: Sequence[str], body: Sequence[str]) -> str:
    """A POSIX sh job script: directive lines, then ``body`` (already quoted command lines)."""
    for line in directives:
        if "\n" in line or "\r" in line:
            raise ResourceError(f"directive line {line!r} spans lines", retryable=False)
    return "\n".join(["#!/bin/sh", *directives, "", *body, ""])


def array_body(variable: str, job_dir: str, members: Sequence[tuple[str, str]]) -> list[str]:
    """The body of a job array's script: task ``i`` runs ``members[i]``, (work directory, quoted command line),
    in that directory (as a single job runs in its own), its output in ``task-<i>.out`` and ``.err`` of
    ``job_dir`` whatever the scheduler does with an array's output files.

    The task index comes from the scheduler (``variable``, e.g. SLURM_ARRAY_TASK_ID) and only selects a
    line: it never reaches a command itself.
    """
    lines = [f'case "${{{variable}:-}}" in']
    for index, (workdir, line) in enumerate(members):
        files = shlex.quote(f"{job_dir}/task-{index}")
        lines.append(f"{index}) exec >{files}.out 2>{files}.err; cd {shlex.quote(workdir)} || exit 96; "
                     f"exec {line} ;;")
    lines += [f'*) echo "no member for task ${{{variable}:-}}" >&2; exit 97 ;;', "esac"]
    return lines


def array_key(job_id: str) -> str:
    """The job a job id belongs to as one slot of a host: an array task's array (SLURM ``12_3``, Torque
    ``12[3].server``), else the job itself. For the scheduler, which holds no dialect."""
    return _TASK_RE.sub("[]", job_id).partition("_")[0]


def command(argv: Sequence[str]) -> str:
    """A command line with every word quoted."""
    return " ".join(shlex.quote(a) for a in argv)


class Dialect(Protocol):
    """One batch system's directives, commands and outputs."""

    #: "slurm", "pbs" or "moab"
    name: str
    #: the variable holding a job array task's index, None when the broker does not submit arrays here
    array_variable: str | None

    def task_id(self, array_id: str, index: int) -> str:
        """The id the scheduler's queue gives task ``index`` of the array submitted as ``array_id``."""

    def array_of(self, job_id: str) -> str:
        """The id the array of task ``job_id`` was submitted as (``job_id`` itself for any other job)."""

    def directives(self, job: JobSpec) -> list[str]:
        """The script's directive lines for ``job``."""

    def submit(self, script_name: str) -> list[str]:
        """argv that submits the script (run in the job directory)."""

    def parse_submit(self, done: Completed) -> str:
        """The job id from a submission's output; SubmitRejected or SchedulerUnreachable on failure."""

    def query(self, login: str) -> list[str]:
        """argv that lists every job of ``login`` the scheduler still knows (ONE call per poll)."""

    def parse_query(self, done: Completed) -> dict[str, JobInfo]:
        """Jobs by id; SchedulerUnreachable when the scheduler did not answer."""

    def history(self, login: str, job_ids: Sequence[str]) -> str | None:
        """A shell command that reports jobs that left the queue, or None if there is no such source."""

    def parse_history(self, done: Completed) -> dict[str, JobInfo]:
        """Jobs by id from :meth:`history`; SchedulerUnreachable when it failed."""

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        """argv that cancels jobs."""

    def cancel_failed(self, done: Completed) -> str | None:
        """None when the cancel worked or the jobs were already gone; else why it failed."""


__all__ = ["CANCELLED", "COMPLETED", "Dialect", "ENDED", "FAILED", "JobInfo", "JobRef", "JobSpec", "LOST", "PENDING",
           "RUNNING", "SchedulerUnreachable", "SubmitRejected", "TIMEOUT", "array_body", "array_key", "command",
           "hms",
           "job_spec", "job_token", "mebibytes", "script", "token"]
