"""Reconciliation of a batch attempt's status file with the scheduler's view (the rules, case by case)."""

from __future__ import annotations

from broker.elf import elf
from broker.launchers import base
from broker.launchers import jobs as batch_jobs
from broker.launchers.base import LaunchHandle
from broker.launchers.reconcile import Rules, reconcile
from broker.launchers.tracking import Tracked

RULES = Rules(settle_polls=2, lost_after=600.0, scheduler="Slurm")
DONE = {"outcome": base.SUCCEEDED, "exit_code": 0, "message": "exit code 0"}
TERMED = {"outcome": base.CANCELLED, "exit_code": 143, "message": "cancelled"}


def attempt(cancelled: bool = False) -> Tracked:
    tracked = Tracked(LaunchHandle(node_id=1, attempt=1, workdir="/w", job_id="7"), None)
    tracked.extra = batch_jobs.JobRef("7", "/w", "wb-1-1-abcd")
    tracked.cancelled = cancelled
    return tracked


def job(state: str, raw: str = "", exit_code: int | None = None) -> dict[str, batch_jobs.JobInfo]:
    return {"7": batch_jobs.JobInfo("7", "wb-1-1-abcd", state, "/w", exit_code, raw or state)}


def polls(tracked: Tracked, item: dict, jobs, rules: Rules = RULES) -> list[bool]:
    return [reconcile(tracked, item, jobs, final=False, rules=rules) for _ in range(rules.settle_polls + 1)]


def test_a_final_status_file_decides_whatever_the_scheduler_says():
    for jobs in (None, {}, job(batch_jobs.RUNNING), job(batch_jobs.FAILED)):
        tracked = attempt()
        assert reconcile(tracked, {"status": DONE}, jobs, final=False, rules=RULES)
        assert (tracked.status, tracked.override) == (DONE, None)


def test_an_elf_killed_at_the_time_limit_is_a_timeout_not_a_cancel():
    tracked = attempt()
    assert reconcile(tracked, {"status": TERMED}, job(batch_jobs.TIMEOUT, "TIMEOUT (TimeLimit)"), final=False,
                     rules=RULES)
    assert tracked.override == (base.TIMEOUT, "killed by Slurm at the job's time limit (TIMEOUT (TimeLimit))")


def test_a_payload_terminated_at_the_time_limit_before_its_elf_is_a_timeout_not_a_failure():
    # the scheduler signals every process of the job: the payload may die first and the elf record "failed"
    payload_first = {"outcome": base.FAILED, "exit_code": 143, "message": "exit code 143 (SIGTERM)"}
    tracked = attempt()
    assert polls(tracked, {"status": payload_first}, job(batch_jobs.RUNNING, "COMPLETING"))[:2] == [False, False]
    assert reconcile(tracked, {"status": payload_first}, job(batch_jobs.TIMEOUT, "TIMEOUT"), final=False, rules=RULES)
    assert tracked.override == (base.TIMEOUT, "killed by Slurm at the job's time limit (TIMEOUT)")
    # a job the scheduler ended otherwise: it stays what the elf recorded, a failure with its exit code
    other = attempt()
    assert reconcile(other, {"status": payload_first}, job(batch_jobs.FAILED), final=False, rules=RULES)
    assert (other.status, other.override) == (payload_first, None)


def test_an_elf_killed_by_someone_else_waits_for_the_scheduler_then_is_lost():
    tracked = attempt()
    assert polls(tracked, {"status": TERMED}, job(batch_jobs.RUNNING, "COMPLETING")) == [False, False, True]
    assert tracked.override == (base.LOST, "killed by a signal that did not come from the broker")


def test_an_elf_the_broker_cancelled_is_cancelled():
    tracked = attempt(cancelled=True)
    assert reconcile(tracked, {"status": TERMED}, job(batch_jobs.RUNNING), final=False, rules=RULES)
    assert tracked.override is None and tracked.status == TERMED


def test_a_payload_that_ended_before_the_cancel_is_never_recorded_cancelled():
    # the elf's verdict "exited" came first; the broker's cancel then signalled nothing, and the job went
    # away without a status file (the host died): lost, to be run again, not cancelled
    tracked = attempt(cancelled=True)
    assert reconcile(tracked, {"status": None, "verdict": "exited"}, job(batch_jobs.CANCELLED), final=True, rules=RULES)
    assert tracked.override == (base.LOST, "job 7 was cancelled outside the broker (CANCELLED)")
    finished = attempt(cancelled=True)
    assert reconcile(finished, {"status": DONE, "verdict": "exited"}, job(batch_jobs.COMPLETED), final=False,
                     rules=RULES)
    assert (finished.status, finished.override) == (DONE, None)


def test_a_scheduler_that_does_not_answer_decides_nothing_even_long_after():
    tracked = attempt()
    rules = Rules(settle_polls=0, lost_after=0.0, scheduler="Slurm")
    assert polls(tracked, {"status": None}, None, rules) == [False]
    assert reconcile(tracked, {"status": None}, None, final=True, rules=rules) is False


def test_a_job_unknown_to_an_answering_scheduler_is_lost_after_the_deadline():
    tracked = attempt()
    assert reconcile(tracked, {"status": None}, {}, final=False, rules=RULES) is False
    assert reconcile(tracked, {"status": None}, {}, final=False, rules=Rules(2, 0.0, "Slurm")) is True
    assert tracked.override == (base.LOST, "Slurm no longer knows job 7 and it left no result")


def test_a_job_the_broker_cancelled_that_its_scheduler_no_longer_knows_is_cancelled_after_a_few_polls():
    tracked = attempt(cancelled=True)
    assert polls(tracked, {"status": None, "verdict": elf.CANCELLED}, {}) == [False, False, True]
    assert tracked.override == (base.CANCELLED, "cancelled")
    # the broker's word without its verdict on disk waits for the deadline, as any job the scheduler lost
    word_only = attempt(cancelled=True)
    assert polls(word_only, {"status": None}, {}) == [False, False, False]
    # nor does another side's verdict (the payload ended first) end the wait
    ended_first = attempt(cancelled=True)
    assert polls(ended_first, {"status": None, "verdict": elf.EXITED}, {}) == [False, False, False]


def test_a_job_that_ended_without_a_status_file_gets_a_few_polls_then_the_schedulers_verdict():
    tracked = attempt()
    assert polls(tracked, {"status": None}, job(batch_jobs.FAILED, "FAILED", 1)) == [False, False, True]
    assert tracked.override == (base.FAILED, "job 7 ended (FAILED, exit code 1) before the elf recorded a result: "
                                             "see /w/job.err")
    for state, cancelled, outcome in ((batch_jobs.TIMEOUT, False, base.TIMEOUT),
                                      (batch_jobs.CANCELLED, True, base.CANCELLED),
                                      (batch_jobs.CANCELLED, False, base.LOST), (batch_jobs.LOST, False, base.LOST)):
        tracked = attempt(cancelled)
        assert reconcile(tracked, {"status": None}, job(state), final=True, rules=RULES)
        assert tracked.override[0] == outcome


def test_pending_and_running_jobs_without_a_result_are_running():
    for state in (batch_jobs.PENDING, batch_jobs.RUNNING):
        tracked = attempt()
        assert polls(tracked, {"status": {"outcome": None}}, job(state)) == [False, False, False]
        assert tracked.job_state == state
