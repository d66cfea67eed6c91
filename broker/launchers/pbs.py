"""PBS/Torque: ``#PBS`` directives, ``qsub``, one ``qstat -f`` per poll, ``qdel``.

No PBS server can be installed here: this dialect is tested against command outputs recorded from the
Torque and PBS documentation (``tests/launchers/recorded/pbs/``), error cases included (unknown job, server
down, queue full). Finished jobs are read from ``qstat`` while the server keeps them (Torque's
``keep_completed``); after that the elf's status file is the only source, as it is the primary one anyway.

Torque's exit status of a finished job: the payload's code, 256 + N when killed by signal N (``qdel``
sends SIGTERM: 271), and negative codes for the server's own reasons (-11: walltime exceeded).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from broker.launchers.batch import BatchLauncher
from broker.launchers.jobs import (CANCELLED, COMPLETED, FAILED, LOST, PENDING, RUNNING, TIMEOUT, JobInfo, JobSpec,
                                   SchedulerUnreachable, SubmitRejected, mebibytes)
from broker.resources.shell import Completed

#: job_state letters -> normalised states (C is decided by the exit status)
STATES = {"Q": PENDING, "H": PENDING, "W": PENDING, "T": PENDING, "R": RUNNING, "E": RUNNING, "S": RUNNING}
#: Torque's exit status when the server killed a job past its walltime
WALLTIME_EXCEEDED = -11
_UNREACHABLE = ("cannot connect to server", "Connection refused", "pbs_iff", "End of File",
                "Premature end of message")
_BUSY = ("Maximum number of jobs already in queue", "would exceed", "queue is not enabled",
         "Resource temporarily unavailable")
_GONE = ("Unknown Job Id", "invalid state for job - COMPLETE", "Job has finished")
#: the task index in an array task's id
_TASK_RE = re.compile(r"\[[0-9]+\]")


def hours(seconds: float) -> str:
    """``HH:MM:SS`` with as many hours as needed (``48:00:00``), rounded up to whole seconds."""
    total = max(1, math.ceil(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def _final(exit_status: int | None) -> str:
    if exit_status is None:
        return LOST
    if exit_status == 0:
        return COMPLETED
    if exit_status == WALLTIME_EXCEEDED:
        return TIMEOUT
    if exit_status in (256 + 15, 256 + 9):
        return CANCELLED
    return FAILED if exit_status > 0 else LOST


def parse_full(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` output: job id -> attributes (wrapped values joined)."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = jobs[line.split(":", 1)[1].strip()] = {}
            key = None
        elif current is not None and line.startswith("\t") and key is not None:
            current[key] += line.strip()  # a long value continues on a tab-indented line
        elif current is not None and " = " in line:
            key, _, value = line.strip().partition(" = ")
            current[key] = value
    return jobs


def torque_directives(job: JobSpec, prefix: str) -> list[str]:
    """Job directives in Torque's option syntax (``-l nodes=N:ppn=C,...``), shared by PBS and MOAB; extra
    ``<directive>`` elements join ``-l`` with their value, or come as flags (``-NAME``) without one."""
    lines = [f"-N {job.name}", f"-o {job.job_dir}/job.out", f"-e {job.job_dir}/job.err", f"-d {job.job_dir}"]
    if job.queue:
        lines.append(f"-q {job.queue}")
    resources = [f"nodes={job.nodes or 1}:ppn={job.cores or 1}"]
    if job.memory:
        resources.append(f"mem={mebibytes(job.memory)}mb")
    if job.walltime:
        resources.append(f"walltime={hours(job.walltime)}")
    # a directive with a value is a resource (-l key=value); one without is a flag option of its own
    # (-n: Torque's node-exclusive), as a <directive> without a value is one for SLURM (--exclusive)
    flags = []
    for key, value in job.directives:
        if value is None:
            flags.append(f"-{key}")
        else:
            resources.append(f"{key}={value}")
    lines.append("-l " + ",".join(resources))
    if job.account:
        lines.append(f"-A {job.account}")
    return [f"{prefix} {line}" for line in lines + flags]


class PbsDialect:
    """The PBS/Torque side of the batch launcher."""

    name = "pbs"
    #: Torque's array task index (``qsub -t``)
    array_variable = "PBS_ARRAYID"

    def task_id(self, array_id: str, index: int) -> str:
        # qsub answers an array as "1098[].server"; its tasks are "1098[0].server", "1098[1].server"...
        return array_id.replace("[]", f"[{index}]", 1) if "[]" in array_id else f"{array_id}[{index}]"

    def array_of(self, job_id: str) -> str:
        return _TASK_RE.sub("[]", job_id, count=1)

    def __init__(self, commands: str | None = None):
        self._bin = (commands.rstrip("/") + "/") if commands else ""

    def directives(self, job: JobSpec) -> list[str]:
        """``#PBS`` lines (Torque resource syntax: nodes=N:ppn=C); an array's ``-t 0-N%M`` (M: slot limit)."""
        lines = torque_directives(job, "#PBS")
        if job.array is not None:
            tasks, throttle = job.array
            lines.append(f"#PBS -t 0-{tasks - 1}" + (f"%{throttle}" if throttle else ""))
        return lines

    def submit(self, script_name: str) -> list[str]:
        return [f"{self._bin}qsub", script_name]

    def parse_submit(self, done: Completed) -> str:
        out = done.out.strip()
        if done.returncode == 0 and out and " " not in out:
            return out
        message = done.err or out or f"exit code {done.returncode}"
        if any(word in message for word in _UNREACHABLE):
            raise SchedulerUnreachable(f"qsub: {message}")
        if any(word in message for word in _BUSY):
            raise SubmitRejected(f"qsub: {message}", retryable=True)
        raise SubmitRejected(f"qsub: {message}", retryable=False)

    def query(self, login: str) -> list[str]:
        # -t: every task of an array on its own (else one summary line stands for them all)
        return [f"{self._bin}qstat", "-f", "-t"]

    def parse_query(self, done: Completed) -> dict[str, JobInfo]:
        if done.returncode != 0 and not done.out.strip():
            raise SchedulerUnreachable(f"qstat: {done.err or 'exit code %d' % done.returncode}")
        jobs = {}
        for job_id, attrs in parse_full(done.out).items():
            letter = attrs.get("job_state", "")
            exit_status = attrs.get("exit_status")
            code = int(exit_status) if exit_status and exit_status.lstrip("-").isdigit() else None
            state = _final(code) if letter == "C" else STATES.get(letter, LOST)
            workdir = attrs.get("init_work_dir")
            if workdir is None and "Output_Path" in attrs:
                workdir = attrs["Output_Path"].partition(":")[2].rsplit("/", 1)[0] or None
            raw = f"job_state {letter}" + (f", exit_status {exit_status}" if exit_status else "")
            jobs[job_id] = JobInfo(job_id, attrs.get("Job_Name", ""), state, workdir, code, raw)
        return jobs

    def history(self, login: str, job_ids: Sequence[str]) -> str | None:
        return None  # Torque keeps finished jobs in qstat for keep_completed seconds, then forgets them

    def parse_history(self, done: Completed) -> dict[str, JobInfo]:
        return {}

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return [f"{self._bin}qdel", *job_ids]

    def cancel_failed(self, done: Completed) -> str | None:
        if done.returncode == 0 or any(word in done.err for word in _GONE):
            return None
        return f"qdel: {done.err or 'exit code %d' % done.returncode}"


class PbsLauncher(BatchLauncher):
    """The batch launcher speaking PBS/Torque (see :class:`broker.launchers.batch.BatchLauncher`)."""

    def __init__(self, endpoint, **options):
        super().__init__(endpoint, PbsDialect(endpoint.host.batch.commands if endpoint.host.batch else None),
                         **options)


__all__ = ["PbsDialect", "PbsLauncher", "hours", "parse_full"]
