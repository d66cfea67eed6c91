"""Reconciling the two views of a batch attempt: the elf's status file and the scheduler's word on its job.

The status file wins: it holds the payload's own outcome, outputs and progress. The scheduler explains
what a status file cannot: a job killed at its time limit (the elf saw only a SIGTERM and wrote
"cancelled"), a job cancelled or lost before its elf ever ran, a job gone from every record. A scheduler
that does not answer makes the attempt's state unknown, which is never a failure: nothing is decided
until it answers again or the status file speaks. Shared file systems lag, so a job the scheduler says has
ended gets a few more polls for its status file to appear.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any

from broker.launchers import base
from broker.launchers import jobs as batch_jobs
from broker.launchers.tracking import Tracked, cancel_recorded, killed_by_broker


@dataclass(frozen=True, slots=True)
class Rules:
    """How patient reconciliation is."""

    #: polls to wait for a status file once the scheduler says the job ended (or why the elf was killed)
    settle_polls: int = 2
    #: seconds a job may be unknown to a scheduler that answers, with no result, before it counts as lost
    lost_after: float = 600.0
    #: the scheduler's name in messages ("Slurm", "PBS", "Moab")
    scheduler: str = "the scheduler"


def scheduler_name(dialect: str) -> str:
    """How messages name a dialect's scheduler."""
    return {"slurm": "Slurm", "pbs": "PBS", "moab": "Moab"}.get(dialect, dialect)


def reconcile(t: Tracked, item: dict[str, Any], jobs: dict[str, batch_jobs.JobInfo] | None, *, final: bool,
              rules: Rules) -> bool:
    """Whether the attempt has ended; when it has, sets ``t.status`` and ``t.override`` (its result).

    ``item``: the agent's probe of its work directory; ``jobs``: the scheduler's jobs by id (None: the
    scheduler did not answer); ``final``: decide now, without waiting for more polls (collect).
    """
    ref: batch_jobs.JobRef = t.extra
    job = jobs.get(ref.job_id) if jobs is not None else None
    if job is not None:
        t.job_state = job.state
    status = item.get("status")
    cancelled = killed_by_broker(t, item)
    if status and status.get("outcome"):
        override = None
        # A scheduler at the time limit signals every process of the job: the elf (which then records
        # "cancelled") or the payload first (which then dies with 128+SIGTERM, and the elf records "failed").
        terminated = status["outcome"] == base.CANCELLED or (
            status["outcome"] == base.FAILED and status.get("exit_code") == 128 + signal.SIGTERM)
        if terminated and not cancelled:
            # SIGTERMed, not by the broker: at its time limit, or by someone else?
            if job is not None and job.state == batch_jobs.TIMEOUT:
                override = (base.TIMEOUT, f"killed by {rules.scheduler} at the job's time limit ({job.raw})")
            elif not final and t.settle < rules.settle_polls and (job is None or job.state not in batch_jobs.ENDED):
                t.settle += 1
                return False  # the scheduler has not said why yet
            elif status["outcome"] == base.CANCELLED:
                override = (base.LOST, "killed by a signal that did not come from the broker")
        t.status, t.override = status, override
        return True
    if job is None:
        if jobs is None:
            return False  # the scheduler did not answer: unknown, never failed
        now = time.monotonic()
        t.unknown_since = t.unknown_since or now
        if cancel_recorded(item):
            # The broker's cancel verdict is on disk and the scheduler no longer knows the job (a pending
            # array task cancelled, on a site whose accounting the account cannot read): an elf that starts
            # after all finds the verdict and runs nothing, so the attempt is decided after the few polls a
            # status file gets, not after lost_after (10 minutes by default).
            if not final and t.settle < rules.settle_polls:
                t.settle += 1
                return False
        elif not final and now - t.unknown_since < rules.lost_after:
            return False
        t.status = status
        t.override = (base.CANCELLED, "cancelled") if cancelled else (
            base.LOST, f"{rules.scheduler} no longer knows job {ref.job_id} and it left no result")
        return True
    t.unknown_since = None
    if job.state not in batch_jobs.ENDED:
        return False
    if not final and t.settle < rules.settle_polls:
        t.settle += 1
        return False  # give the status file a few polls to appear
    t.status = status
    t.override = verdict(job, cancelled, rules.scheduler, ref.err_file)
    return True


def verdict(job: batch_jobs.JobInfo, cancelled: bool, scheduler: str, err_file: str) -> tuple[str, str]:
    """The outcome of an attempt whose job ended without its elf recording one."""
    if cancelled:
        return base.CANCELLED, "cancelled"
    if job.state == batch_jobs.TIMEOUT:
        return base.TIMEOUT, f"killed by {scheduler} at the job's time limit ({job.raw})"
    if job.state == batch_jobs.CANCELLED:
        return base.LOST, f"job {job.job_id} was cancelled outside the broker ({job.raw})"
    if job.state == batch_jobs.LOST:
        return base.LOST, f"job {job.job_id} ended with {job.raw}"
    code = f", exit code {job.exit_code}" if job.exit_code is not None else ""
    return base.FAILED, (f"job {job.job_id} ended ({job.raw}{code}) before the elf recorded a result: see "
                         f"{err_file}")


__all__ = ["Rules", "reconcile", "scheduler_name", "verdict"]
