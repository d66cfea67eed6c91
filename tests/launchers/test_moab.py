"""MOAB through the batch launcher, against command outputs recorded from the Moab documentation.

No Moab server can be installed here: ``msub``/``showq``/``checkjob``/``canceljob`` are replaced by commands
that replay the recordings in ``tests/launchers/recorded/moab`` (errors included: unknown job, server down,
queue full). The launcher, the host agent, the elf and the job script run for real, on this machine.
"""

from __future__ import annotations

import pytest

from broker.errors import ResourceError
from broker.launchers import base
from broker.launchers import jobs as batch_jobs
from broker.launchers.moab import MoabDialect, MoabLauncher
from broker.launchers.remote import Endpoint
from broker.resources.accounts import Account
from broker.resources.catalogue import BatchOptions, Host
from broker.resources.shell import Completed, LocalShell
from tests.fixtures import wait_for
from tests.launchers.recorded import FakeScheduler, completed, run_job
from tests.resources.helpers import LOCAL_ROOT, Ended, request, run_to_end, unique_workflow

ID = "4567"


@pytest.fixture
def fake(tmp_path):
    return FakeScheduler(tmp_path / "bin", "moab", ("msub", "showq", "checkjob", "canceljob"))


@pytest.fixture
def launcher(tmp_path, fake):
    host = Host(name="moab", launcher="moab", scratch=str(tmp_path / "scratch"),
                batch=BatchOptions(default_queue="batch", commands=str(fake.directory)))
    endpoint = Endpoint(host, Account("moab", "root", local=True), LocalShell(), local_root=LOCAL_ROOT)
    with MoabLauncher(endpoint, poll_interval=0.05, settle_polls=1, lost_after=0.5, submit_backoff=0.01) as it:
        yield it


def job_of(launcher, req) -> dict[str, str]:
    job_dir = launcher.endpoint.workdir(req.workdir)
    return {"job_dir": job_dir, "name": batch_jobs.job_token(req.node_id, req.attempt, job_dir), "job_id": ID}


# --------------------------------------------------------------------------------------- the dialect

def test_directives_are_msub_lines():
    job = batch_jobs.JobSpec(name="wb-7-1-3f2a", comment="c", job_dir="/s/d", queue="batch", cores=4, memory=1024**3,
                             walltime=90.0, account="chem")
    assert MoabDialect().directives(job) == [
        "#MSUB -N wb-7-1-3f2a", "#MSUB -o /s/d/job.out", "#MSUB -e /s/d/job.err", "#MSUB -d /s/d", "#MSUB -q batch",
        "#MSUB -l nodes=1:ppn=4,mem=1024mb,walltime=00:01:30", "#MSUB -A chem"]
    # a <directive> without a value is a flag option, as for PBS
    flagged = MoabDialect().directives(batch_jobs.JobSpec("n", "c", "/d", directives=(("n", None),)))
    assert flagged[-2:] == ["#MSUB -l nodes=1:ppn=1", "#MSUB -n"]


def test_msub_outputs_give_the_job_id_or_say_whether_to_retry():
    dialect = MoabDialect()
    assert dialect.parse_submit(completed("moab", "msub-ok", job_id=ID)) == ID
    with pytest.raises(batch_jobs.SubmitRejected, match="MAXIJOB") as full:
        dialect.parse_submit(completed("moab", "msub-queue-full"))
    assert full.value.retryable is True
    with pytest.raises(batch_jobs.SchedulerUnreachable, match="cannot connect to Moab server"):
        dialect.parse_submit(completed("moab", "msub-server-down"))


def test_showq_and_checkjob_xml_give_states_names_and_directories():
    dialect = MoabDialect()
    jobs = dialect.parse_query(completed("moab", "showq-active", job_id=ID, name="wb-7-1-3f2a"))
    assert (jobs[ID].name, jobs[ID].state, jobs["4570"].state) == ("wb-7-1-3f2a", batch_jobs.RUNNING,
                                                                   batch_jobs.PENDING)
    assert dialect.parse_query(completed("moab", "showq-empty")) == {}
    with pytest.raises(batch_jobs.SchedulerUnreachable, match="cannot connect to Moab server"):
        dialect.parse_query(completed("moab", "showq-server-down"))
    for code, state in ((0, batch_jobs.COMPLETED), (2, batch_jobs.FAILED), (-11, batch_jobs.TIMEOUT),
                        (271, batch_jobs.CANCELLED)):
        info = dialect.parse_history(completed("moab", "checkjob-completed", job_id=ID, name="n", job_dir="/d",
                                               code=code))[ID]
        assert (info.state, info.exit_code, info.workdir) == (state, code, "/d")
    removed = dialect.parse_history(completed("moab", "checkjob-removed", job_id=ID, name="n", job_dir="/d"))
    assert removed[ID].state == batch_jobs.CANCELLED
    assert dialect.parse_history(completed("moab", "checkjob-unknown", job_id=ID)) == {}
    with pytest.raises(batch_jobs.SchedulerUnreachable):
        dialect.parse_history(completed("moab", "showq-server-down"))


def test_unreadable_or_hostile_xml_is_refused_without_expanding_anything():
    hostile = b'<!DOCTYPE d [<!ENTITY x "boom">]><Data><job JobID="1" JobName="&x;" State="Running"/></Data>'
    with pytest.raises(batch_jobs.SchedulerUnreachable, match="unreadable XML"):
        MoabDialect().parse_query(Completed(0, hostile, b""))


def test_canceljob_of_a_job_moab_no_longer_knows_is_not_an_error():
    dialect = MoabDialect()
    assert dialect.cancel_failed(completed("moab", "canceljob-ok", job_id=ID)) is None
    assert dialect.cancel_failed(completed("moab", "canceljob-unknown", job_id=ID)) is None
    assert dialect.cancel_failed(completed("moab", "showq-server-down")).startswith("canceljob: ERROR")


# --------------------------------------------------------------------------------------- the launcher

@pytest.mark.slow
def test_a_job_that_left_showq_is_read_back_with_checkjob(launcher, fake):
    req = request(unique_workflow(), "echo '@broker output y=2'\n")
    job = job_of(launcher, req)
    fake.answer("msub", "msub-ok", job_id=ID)
    fake.answer("showq", "showq-eligible", **job)
    handle = launcher.launch(req)
    assert handle.job_id == ID
    ended = Ended()
    launcher.watch(handle, ended)
    run_job(handle.workdir)
    fake.answer("showq", "showq-empty")
    fake.answer("checkjob", "checkjob-completed", code=0, **job)
    wait_for(lambda: ended.count(), what="the job to end")
    assert launcher.collect(handle).outputs == {"y": 2}


@pytest.mark.slow
def test_a_job_removed_by_someone_else_before_it_ran_is_lost_with_the_reason(launcher, fake):
    req = request(unique_workflow(), "true\n")
    job = job_of(launcher, req)
    fake.answer("msub", "msub-ok", job_id=ID)
    fake.answer("showq", "showq-empty")
    fake.answer("checkjob", "checkjob-removed", **job)
    result = run_to_end(launcher, launcher.launch(req))
    assert (result.outcome, result.message) == (base.LOST, f"job {ID} was cancelled outside the broker (Removed)")
    assert fake.calls("checkjob")[0] == f"checkjob --xml {ID}"


@pytest.mark.slow
def test_a_job_checkjob_does_not_know_either_is_lost_after_the_deadline(launcher, fake):
    req = request(unique_workflow(), "true\n")
    fake.answer("msub", "msub-ok", job_id=ID)
    fake.answer("showq", "showq-empty")
    fake.answer("checkjob", "checkjob-unknown", job_id=ID)
    result = run_to_end(launcher, launcher.launch(req))
    assert (result.outcome, result.message) == (base.LOST, f"Moab no longer knows job {ID} and it left no result")


def test_a_lost_msub_reply_is_looked_up_in_showq_and_adopted(launcher, fake):
    req = request(unique_workflow(), "true\n")
    job = job_of(launcher, req)
    fake.answer("msub", "msub-server-down")
    fake.answer("showq", "showq-eligible", **job)
    assert launcher.launch(req).job_id == ID
    assert [c.split()[0] for c in fake.calls()] == ["msub", "showq"]


def test_a_full_queue_is_a_retryable_refusal(launcher, fake):
    fake.answer("msub", "msub-queue-full")
    with pytest.raises(ResourceError, match="MAXIJOB") as caught:
        launcher.launch(request(unique_workflow(), "true\n"))
    assert caught.value.retryable is True


@pytest.mark.slow
def test_cancel_runs_canceljob_and_a_cancelled_pending_job_ends_cancelled(launcher, fake):
    req = request(unique_workflow(), "true\n")
    job = job_of(launcher, req)
    fake.answer("msub", "msub-ok", job_id=ID)
    fake.answer("showq", "showq-eligible", **job)
    handle = launcher.launch(req)
    fake.answer("canceljob", "canceljob-ok", job_id=ID)
    launcher.cancel(handle)
    assert fake.calls("canceljob") == [f"canceljob {ID}"]
    fake.answer("showq", "showq-empty")
    fake.answer("checkjob", "checkjob-removed", **job)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
