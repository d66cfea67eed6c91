"""MOAB: ``#MSUB`` directives, ``msub``, one ``showq --xml`` per poll, ``checkjob --xml`` for jobs that left
it, ``canceljob``.

No Moab server can be installed here: this dialect is tested against command outputs recorded from the
Moab documentation (``tests/launchers/recorded/moab/``), error cases included (unknown job, server down,
queue full). Moab's XML is read with a hardened lxml parser (no DTD, no entities, no network).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lxml import etree

from broker.launchers.batch import BatchLauncher
from broker.launchers.jobs import (CANCELLED, COMPLETED, FAILED, LOST, PENDING, RUNNING, TIMEOUT, JobInfo, JobSpec,
                                   SchedulerUnreachable, SubmitRejected, command)
from broker.launchers.pbs import torque_directives
from broker.resources.shell import Completed

#: Moab job states -> normalised states (Completed is decided by the completion code)
STATES = {
    "Running": RUNNING, "Starting": RUNNING, "Suspended": RUNNING,
    "Idle": PENDING, "Hold": PENDING, "BatchHold": PENDING, "SystemHold": PENDING, "UserHold": PENDING,
    "Deferred": PENDING, "Staging": PENDING, "Blocked": PENDING, "NotQueued": PENDING, "Migrated": PENDING,
    "Removed": CANCELLED, "Vacated": LOST,
}
#: completion code of a job the resource manager killed past its walltime (Torque's JOB_EXEC_OVERLIMIT_WT)
WALLTIME_EXCEEDED = -11
_UNREACHABLE = ("cannot connect to Moab server", "lost connection", "cannot request service", "timed out")
_BUSY = ("MAXJOB", "MAXIJOB", "maxjob", "exceeds", "too many jobs")
_GONE = ("invalid job specified", "cannot locate job", "already completed")
_XML_DECL = re.compile(r"<\?xml[^>]*\?>")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False)


def _state(attrs: dict[str, str]) -> tuple[str, int | None]:
    word = attrs.get("State", "")
    code_text = attrs.get("CompletionCode")
    code = int(code_text) if code_text and code_text.lstrip("-").isdigit() else None
    if word == "Completed":
        if code == 0:
            return COMPLETED, code
        if code == WALLTIME_EXCEEDED:
            return TIMEOUT, code
        if code in (256 + 15, 256 + 9):
            return CANCELLED, code
        return (FAILED if code is not None and code > 0 else LOST), code
    return STATES.get(word, LOST), code


def parse_jobs(text: str) -> dict[str, JobInfo]:
    """Every ``<job>`` element of one or more Moab XML documents (showq, checkjob)."""
    body = _XML_DECL.sub("", text).strip()
    if not body:
        return {}
    try:
        root = etree.fromstring(f"<all>{body}</all>".encode(), _parser())
    except etree.XMLSyntaxError as exc:
        raise SchedulerUnreachable(f"Moab printed unreadable XML: {exc}") from None
    jobs = {}
    for el in root.iter("job"):
        attrs = dict(el.attrib)
        job_id = attrs.get("JobID")
        if not job_id:
            continue
        state, code = _state(attrs)
        jobs[job_id] = JobInfo(job_id, attrs.get("JobName", ""), state, attrs.get("IWD") or None, code,
                               attrs.get("State", "") + (f" (completion code {code})" if code is not None else ""))
    return jobs


class MoabDialect:
    """The MOAB side of the batch launcher."""

    name = "moab"
    #: arrays are not submitted here (no scheduler to test them against): sweeps go out one job per member
    #: or in bundles
    array_variable = None

    def task_id(self, array_id: str, index: int) -> str:
        raise NotImplementedError("no job arrays on this scheduler")

    def array_of(self, job_id: str) -> str:
        return job_id

    def __init__(self, commands: str | None = None):
        self._bin = (commands.rstrip("/") + "/") if commands else ""

    def directives(self, job: JobSpec) -> list[str]:
        """``#MSUB`` lines (the same Torque option syntax as PBS)."""
        return torque_directives(job, "#MSUB")

    def submit(self, script_name: str) -> list[str]:
        return [f"{self._bin}msub", script_name]

    def parse_submit(self, done: Completed) -> str:
        words = done.out.split()
        if done.returncode == 0 and len(words) == 1:
            return words[0]  # msub prints a blank line, then the job id
        message = done.err or done.out.strip() or f"exit code {done.returncode}"
        if any(word in message for word in _UNREACHABLE):
            raise SchedulerUnreachable(f"msub: {message}")
        if any(word in message for word in _BUSY):
            raise SubmitRejected(f"msub: {message}", retryable=True)
        raise SubmitRejected(f"msub: {message}", retryable=False)

    def query(self, login: str) -> list[str]:
        return [f"{self._bin}showq", "--xml", "-w", f"user={login}"]

    def parse_query(self, done: Completed) -> dict[str, JobInfo]:
        if done.returncode != 0:
            raise SchedulerUnreachable(f"showq: {done.err or 'exit code %d' % done.returncode}")
        return parse_jobs(done.out)

    def history(self, login: str, job_ids: Sequence[str]) -> str | None:
        # checkjob takes one job id: one command line runs it for every job that left showq
        check = command([f"{self._bin}checkjob", "--xml"])
        return "for j in " + " ".join(command([j]) for j in job_ids) + f"; do {check} \"$j\"; done; true"

    def parse_history(self, done: Completed) -> dict[str, JobInfo]:
        jobs = parse_jobs(done.out)
        if not jobs and any(word in done.err for word in _UNREACHABLE):
            raise SchedulerUnreachable(f"checkjob: {done.err}")
        return jobs

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return [f"{self._bin}canceljob", *job_ids]

    def cancel_failed(self, done: Completed) -> str | None:
        if done.returncode == 0 or any(word in done.err + done.out for word in _GONE):
            return None
        return f"canceljob: {done.err or done.out.strip() or 'exit code %d' % done.returncode}"


class MoabLauncher(BatchLauncher):
    """The batch launcher speaking MOAB (see :class:`broker.launchers.batch.BatchLauncher`)."""

    def __init__(self, endpoint, **options):
        super().__init__(endpoint, MoabDialect(endpoint.host.batch.commands if endpoint.host.batch else None),
                         **options)


__all__ = ["MoabDialect", "MoabLauncher", "parse_jobs"]
