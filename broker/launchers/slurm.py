"""SLURM: ``#SBATCH`` directives, ``sbatch``, one ``squeue`` per poll, ``sacct`` for jobs that left it, ``scancel``.

Verified against SLURM 22.05.8 (Debian 12): ``squeue --json`` ignores ``-j`` there (it returns every job) and
``scontrol --json`` does not exist, so the poll is ``squeue -h -u LOGIN -t all -o ...`` (every job of the account, finished ones included until
``MinJobAge``); jobs that left the queue are looked up with ``sacct`` (slurmdbd) or ``sacct -c`` (the
jobcomp file; it must be writable by the account, which SLURM's plugin opens for appending). A controller
that does not answer makes every state unknown, never failed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from broker.launchers.batch import BatchLauncher
from broker.launchers.jobs import (CANCELLED, COMPLETED, FAILED, LOST, PENDING, RUNNING, TIMEOUT, JobInfo, JobSpec,
                                   SchedulerUnreachable, SubmitRejected, command, hms, mebibytes)
from broker.resources.shell import Completed

#: squeue/sacct state words -> normalised states (sacct adds " by <uid>" to CANCELLED)
STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING,
    "REQUEUE_FED": PENDING, "RESV_DEL_HOLD": PENDING, "SPECIAL_EXIT": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "SUSPENDED": RUNNING, "STOPPED": RUNNING, "SIGNALING": RUNNING,
    "STAGE_OUT": RUNNING, "RESIZING": RUNNING,
    "COMPLETED": COMPLETED, "FAILED": FAILED, "OUT_OF_MEMORY": FAILED, "CANCELLED": CANCELLED,
    "TIMEOUT": TIMEOUT, "DEADLINE": TIMEOUT, "NODE_FAIL": LOST, "PREEMPTED": LOST, "BOOT_FAIL": LOST,
    "REVOKED": LOST,
}
#: squeue output: id, state, reason, name, working directory
QUERY_FORMAT = "%i|%T|%r|%j|%Z"
HISTORY_FIELDS = "JobID,State,ExitCode,JobName,WorkDir"
#: sbatch errors after which the job may exist all the same (a lost reply)
_AMBIGUOUS = ("Socket timed out", "Zero Bytes were transmitted", "Connection reset")
#: sbatch errors that mean "not now" rather than "never"
_BUSY = ("Unable to contact slurm controller", "AssocMaxSubmitJobLimit", "QOSMaxSubmitJobPerUserLimit",
         "MaxSubmitJobLimit", "Resource temporarily unavailable", "Slurm temporarily unable")
_JOB_ID_RE = re.compile(r"([0-9]+(?:_[0-9]+)?)(?:;[A-Za-z0-9_-]+)?")


def _state(word: str) -> str:
    return STATES.get(word.split()[0] if word else "", LOST if word else PENDING)


def _exit_code(text: str) -> int | None:
    code, _, _ = text.partition(":")
    return int(code) if code.isdigit() else None


class SlurmDialect:
    """The SLURM side of the batch launcher."""

    name = "slurm"
    array_variable = "SLURM_ARRAY_TASK_ID"

    def __init__(self, commands: str | None = None):
        """``commands``: the directory of the SLURM commands (None: PATH)."""
        self._bin = (commands.rstrip("/") + "/") if commands else ""

    def directives(self, job: JobSpec) -> list[str]:
        """``#SBATCH`` lines: every value is a checked token or a checked path."""
        # an array's tasks each write their own files (%a: the task index)
        stem = "job" if job.array is None else "task-%a"
        lines = [f"--job-name={job.name}", f"--comment={job.comment}", f"--chdir={job.job_dir}",
                 f"--output={job.job_dir}/{stem}.out", f"--error={job.job_dir}/{stem}.err", "--ntasks=1"]
        if job.array is not None:
            tasks, throttle = job.array
            lines.append(f"--array=0-{tasks - 1}" + (f"%{throttle}" if throttle else ""))
        if job.queue:
            lines.append(f"--partition={job.queue}")
        if job.nodes:
            lines.append(f"--nodes={job.nodes}")
        if job.cores:
            lines.append(f"--cpus-per-task={job.cores}")
        if job.memory:
            lines.append(f"--mem={mebibytes(job.memory)}M")
        if job.walltime:
            lines.append(f"--time={hms(job.walltime)}")
        if job.account:
            lines.append(f"--account={job.account}")
        for key, value in job.directives:
            lines.append(f"--{key}" if value is None else f"--{key}={value}")
        return [f"#SBATCH {line}" for line in lines]

    def task_id(self, array_id: str, index: int) -> str:
        return f"{array_id}_{index}"

    def array_of(self, job_id: str) -> str:
        return job_id.partition("_")[0]

    def submit(self, script_name: str) -> list[str]:
        return [f"{self._bin}sbatch", "--parsable", script_name]

    def parse_submit(self, done: Completed) -> str:
        if done.returncode == 0:
            match = _JOB_ID_RE.fullmatch(done.out.strip())
            if match:
                return match.group(1)
            raise SubmitRejected(f"sbatch printed no job id: {done.out.strip()[:200]!r}")
        message = done.err or f"exit code {done.returncode}"
        if any(word in message for word in _AMBIGUOUS):
            raise SchedulerUnreachable(f"sbatch: {message}")
        if any(word in message for word in _BUSY):
            raise SubmitRejected(f"sbatch: {message}", retryable=True)
        raise SubmitRejected(f"sbatch: {message}", retryable=False)

    def query(self, login: str) -> list[str]:
        # -r: one line per array task, pending ones included (else "12_[3-999%8]" stands for them all)
        return [f"{self._bin}squeue", "-h", "-r", "-u", login, "-t", "all", "-o", QUERY_FORMAT]

    def parse_query(self, done: Completed) -> dict[str, JobInfo]:
        if done.returncode != 0:
            raise SchedulerUnreachable(f"squeue: {done.err or 'exit code %d' % done.returncode}")
        jobs = {}
        for line in done.out.splitlines():
            parts = line.split("|", 4)
            if len(parts) != 5:
                continue
            job_id, state, reason, name, workdir = parts
            jobs[job_id] = JobInfo(job_id, name, _state(state), workdir or None, None,
                                   f"{state} ({reason})" if reason and reason != "None" else state)
        return jobs

    def history(self, login: str, job_ids: Sequence[str]) -> str | None:
        # With slurmdbd, plain sacct; without it ("accounting storage is disabled"), the jobcomp file.
        # Tasks of an array are asked for by the array's id: one lookup per array, however many tasks
        # left the queue (the jobcomp file knows tasks only by their own job ids, so there they are not
        # found, and a task without a status file is judged lost after lost_after).
        ids = ",".join(sorted({job_id.partition("_")[0] for job_id in job_ids}))
        base = [f"{self._bin}sacct", "-n", "-P", "-X", "-j", ids, "-o", HISTORY_FIELDS]
        jobcomp = [f"{self._bin}sacct", "-c", "-n", "-P", "-j", ids, "-o", HISTORY_FIELDS]
        return f"{command(base)} 2>/dev/null || {command(jobcomp)}"

    def parse_history(self, done: Completed) -> dict[str, JobInfo]:
        if done.returncode != 0:
            raise SchedulerUnreachable(f"sacct: {done.err or 'exit code %d' % done.returncode}")
        jobs = {}
        for line in done.out.splitlines():
            parts = line.split("|", 4)
            if len(parts) != 5 or "." in parts[0]:
                continue  # job steps (123.batch) repeat their job
            job_id, state, exit_code, name, workdir = parts
            jobs[job_id] = JobInfo(job_id, name, _state(state), workdir or None, _exit_code(exit_code), state)
        return jobs

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return [f"{self._bin}scancel", *job_ids]

    def cancel_failed(self, done: Completed) -> str | None:
        if done.returncode == 0 or "Invalid job id" in done.err or "already completing or completed" in done.err:
            return None
        return f"scancel: {done.err or 'exit code %d' % done.returncode}"


class SlurmLauncher(BatchLauncher):
    """The batch launcher speaking SLURM (see :class:`broker.launchers.batch.BatchLauncher`)."""

    def __init__(self, endpoint, **options):
        super().__init__(endpoint, SlurmDialect((endpoint.host.batch.commands if endpoint.host.batch else None)),
                         **options)


__all__ = ["SlurmDialect", "SlurmLauncher", "STATES"]
