"""PBS/Torque through the batch launcher, against command outputs recorded from the Torque documentation.

No PBS server can be installed here: ``qsub``/``qstat``/``qdel`` are replaced by commands that replay the
recordings in ``tests/launchers/recorded/pbs`` (errors included: unknown job, server down, queue full).
The launcher, the host agent, the elf and the job script run for real, on this machine.
"""

from __future__ import annotations

import time

import pytest

from broker.description.model import Scheduling
from broker.errors import ResourceError
from broker.launchers import base
from broker.launchers import jobs as batch_jobs
from broker.launchers.pbs import PbsDialect, PbsLauncher
from broker.launchers.remote import Endpoint
from broker.resources.accounts import Account
from broker.resources.catalogue import BatchOptions, Host
from broker.resources.shell import LocalShell
from tests.fixtures import wait_for
from tests.launchers.recorded import FakeScheduler, completed, run_job
from tests.resources.helpers import LOCAL_ROOT, Ended, request, run_to_end, unique_workflow

ID = "1234.pbs-server.example.org"


@pytest.fixture
def fake(tmp_path):
    return FakeScheduler(tmp_path / "bin", "pbs", ("qsub", "qstat", "qdel"))


@pytest.fixture
def launcher(tmp_path, fake):
    host = Host(name="torque", launcher="pbs", scratch=str(tmp_path / "scratch"),
                batch=BatchOptions(default_queue="batch", directives=("gres",), commands=str(fake.directory)))
    endpoint = Endpoint(host, Account("torque", "root", local=True), LocalShell(), local_root=LOCAL_ROOT)
    with PbsLauncher(endpoint, poll_interval=0.05, settle_polls=1, lost_after=0.5, submit_backoff=0.01) as it:
        yield it


def job_of(launcher, req) -> dict[str, str]:
    """The job directory and name a request's job gets (what qstat shows about it)."""
    job_dir = launcher.endpoint.workdir(req.workdir)
    return {"job_dir": job_dir, "name": batch_jobs.job_token(req.node_id, req.attempt, job_dir), "job_id": ID}


# --------------------------------------------------------------------------------------- the dialect

def test_directives_follow_the_scheduling_profile_in_torque_syntax():
    job = batch_jobs.JobSpec(name="wb-7-1-3f2a", comment="wf-x/n:1", job_dir="/s/a/wf-x/n/1", queue="batch", nodes=2,
                             cores=8, memory=3 * 1024**3, walltime=50 * 3600.0, account="chem",
                             directives=(("gres", "gpu:2"),))
    assert PbsDialect().directives(job) == [
        "#PBS -N wb-7-1-3f2a", "#PBS -o /s/a/wf-x/n/1/job.out", "#PBS -e /s/a/wf-x/n/1/job.err",
        "#PBS -d /s/a/wf-x/n/1", "#PBS -q batch", "#PBS -l nodes=2:ppn=8,mem=3072mb,walltime=50:00:00,gres=gpu:2",
        "#PBS -A chem"]
    # a <directive> without a value is a flag option (Torque's -n: node-exclusive), not a launch-time failure
    flagged = PbsDialect().directives(batch_jobs.JobSpec("n", "c", "/d", directives=(("n", None), ("gres", "gpu:1"))))
    assert flagged == ["#PBS -N n", "#PBS -o /d/job.out", "#PBS -e /d/job.err", "#PBS -d /d",
                       "#PBS -l nodes=1:ppn=1,gres=gpu:1", "#PBS -n"]


def test_qsub_outputs_give_the_job_id_or_say_whether_to_retry():
    dialect = PbsDialect()
    assert dialect.parse_submit(completed("pbs", "qsub-ok", job_id=ID)) == ID
    with pytest.raises(batch_jobs.SubmitRejected, match="Maximum number of jobs already in queue") as full:
        dialect.parse_submit(completed("pbs", "qsub-queue-full"))
    assert full.value.retryable is True
    with pytest.raises(batch_jobs.SubmitRejected, match=r"^qsub: qsub: submit error \(Unknown queue") as unknown:
        dialect.parse_submit(completed("pbs", "qsub-unknown-queue"))
    assert unknown.value.retryable is False
    with pytest.raises(batch_jobs.SchedulerUnreachable, match="cannot connect to server pbs-server.example.org"):
        dialect.parse_submit(completed("pbs", "qsub-server-down"))


def test_qstat_full_output_gives_every_job_with_its_state_and_directory():
    dialect = PbsDialect()
    jobs = dialect.parse_query(completed("pbs", "qstat-f-running", job_id=ID, name="wb-7-1-3f2a",
                                         job_dir="/s/asmith/wf-x/step/1"))
    assert jobs[ID] == batch_jobs.JobInfo(ID, "wb-7-1-3f2a", batch_jobs.RUNNING, "/s/asmith/wf-x/step/1", None,
                                          "job_state R")
    other = jobs["1201.pbs-server.example.org"]  # someone else's, queued, without init_work_dir
    assert (other.state, other.workdir) == (batch_jobs.PENDING, "/home/bjones")
    for exit_status, state in ((0, batch_jobs.COMPLETED), (3, batch_jobs.FAILED), (-11, batch_jobs.TIMEOUT),
                               (271, batch_jobs.CANCELLED), (-2, batch_jobs.LOST)):
        done = dialect.parse_query(completed("pbs", "qstat-f-completed", job_id=ID, name="n", job_dir="/d",
                                             exit_status=exit_status, comment="Job run at Mon Jun 03"))
        assert (done[ID].state, done[ID].exit_code) == (state, exit_status)
    assert dialect.parse_query(completed("pbs", "qstat-f-empty")) == {}
    with pytest.raises(batch_jobs.SchedulerUnreachable, match="cannot connect to server"):
        dialect.parse_query(completed("pbs", "qstat-server-down"))


def test_qdel_of_a_job_that_is_gone_or_finished_is_not_an_error():
    dialect = PbsDialect()
    assert dialect.cancel_failed(completed("pbs", "qdel-ok")) is None
    assert dialect.cancel_failed(completed("pbs", "qdel-unknown", job_id=ID)) is None
    assert dialect.cancel_failed(completed("pbs", "qdel-completed", job_id=ID)) is None
    assert dialect.cancel_failed(completed("pbs", "qstat-server-down")).startswith("qdel: Connection refused")


# --------------------------------------------------------------------------------------- the launcher

@pytest.mark.slow
def test_a_job_goes_through_qsub_and_qstat_and_its_result_comes_from_the_status_file(launcher, fake):
    req = request(unique_workflow(), "echo '@broker output x=1'\n")
    job = job_of(launcher, req)
    fake.answer("qsub", "qsub-ok", job_id=ID)
    fake.answer("qstat", "qstat-f-queued", **job)
    handle = launcher.launch(req, Scheduling(cores=2, walltime=600.0))
    assert handle.job_id == ID and fake.calls("qsub") == ["qsub job.sh"]
    script = open(f"{handle.workdir}/job.sh").read()
    assert "#PBS -l nodes=1:ppn=2,walltime=00:10:00" in script and f"#PBS -N {job['name']}" in script
    ended = Ended()
    launcher.watch(handle, ended)
    rounds = launcher.poller.rounds
    wait_for(lambda: launcher.poller.rounds > rounds + 2, what="polls of the queued job")
    assert not ended.count()
    fake.answer("qstat", "qstat-f-running", **job)
    assert run_job(handle.workdir) == 0  # the compute node runs it
    fake.answer("qstat", "qstat-f-completed", exit_status=0, comment="ok", **job)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.outputs) == (base.SUCCEEDED, {"x": 1})
    assert set(line.split()[0] for line in fake.calls()) == {"qsub", "qstat"}


@pytest.mark.slow
def test_a_job_the_server_killed_at_its_walltime_times_out(launcher, fake):
    req = request(unique_workflow(), "sleep 600\n")
    job = job_of(launcher, req)
    fake.answer("qsub", "qsub-ok", job_id=ID)
    fake.answer("qstat", "qstat-f-completed", exit_status=-11,
                comment="Job exceeded its walltime limit. Job was aborted", **job)
    result = run_to_end(launcher, launcher.launch(req))
    assert (result.outcome, result.message) == (
        base.TIMEOUT, "killed by PBS at the job's time limit (job_state C, exit_status -11)")


@pytest.mark.slow
def test_a_server_that_does_not_answer_leaves_the_job_unknown_never_failed(launcher, fake):
    req = request(unique_workflow(), "true\n")
    job = job_of(launcher, req)
    fake.answer("qsub", "qsub-ok", job_id=ID)
    fake.answer("qstat", "qstat-server-down")
    handle = launcher.launch(req)
    ended = Ended()
    launcher.watch(handle, ended)
    rounds, since = launcher.poller.rounds, time.monotonic()
    # polls far past lost_after (0.5 s): counted in time as well as in rounds, which a busy machine slows
    wait_for(lambda: launcher.poller.rounds > rounds + 5 and time.monotonic() - since > 5.0,
             what="polls while the server is down")
    assert not ended.count()  # unknown is not lost
    fake.answer("qstat", "qstat-f-running", **job)
    run_job(handle.workdir)
    assert run_to_end(launcher, handle).outcome == base.SUCCEEDED


def test_a_lost_qsub_reply_is_looked_up_and_the_job_adopted_not_submitted_again(launcher, fake):
    req = request(unique_workflow(), "true\n")
    job = job_of(launcher, req)
    fake.answer("qsub", "qsub-server-down")  # the reply is lost; the job was queued all the same
    fake.answer("qstat", "qstat-f-queued", **job)
    handle = launcher.launch(req)
    assert handle.job_id == ID
    assert [c.split()[0] for c in fake.calls()] == ["qsub", "qstat"]


@pytest.mark.slow
def test_a_submission_not_found_after_a_lost_reply_is_submitted_once_more(launcher, fake):
    req = request(unique_workflow(), "true\n")
    fake.answer("qsub", "qsub-server-down", "qsub-ok", job_id=ID)
    fake.answer("qstat", "qstat-f-empty")
    assert launcher.launch(req).job_id == ID
    assert [c.split()[0] for c in fake.calls()] == ["qsub", "qstat", "qsub"]


@pytest.mark.slow
def test_a_full_queue_is_a_retryable_refusal_and_an_unknown_queue_a_final_one(launcher, fake):
    fake.answer("qsub", "qsub-queue-full")
    with pytest.raises(ResourceError, match="Maximum number of jobs already in queue") as full:
        launcher.launch(request(unique_workflow(), "true\n"))
    assert full.value.retryable is True and len(fake.calls("qsub")) == 1
    fake.answer("qsub", "qsub-unknown-queue")
    with pytest.raises(ResourceError, match="Unknown queue") as unknown:
        launcher.launch(request(unique_workflow(), "true\n", node_id=2))
    assert unknown.value.retryable is False


@pytest.mark.slow
def test_cancel_runs_qdel_and_the_cancelled_job_ends_cancelled(launcher, fake):
    req = request(unique_workflow(), "true\n")
    job = job_of(launcher, req)
    fake.answer("qsub", "qsub-ok", job_id=ID)
    fake.answer("qstat", "qstat-f-queued", **job)
    handle = launcher.launch(req)
    fake.answer("qdel", "qdel-ok")
    launcher.cancel(handle)
    assert fake.calls("qdel") == [f"qdel {ID}"]
    fake.answer("qstat", "qstat-f-completed", exit_status=271, comment="Job deleted", **job)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
    fake.answer("qdel", "qdel-unknown", job_id=ID)
    launcher.cancel(handle)  # ended: nothing to do, no error


@pytest.mark.slow
def test_a_job_that_vanished_from_qstat_without_a_result_is_lost_after_the_deadline(launcher, fake):
    req = request(unique_workflow(), "true\n")
    fake.answer("qsub", "qsub-ok", job_id=ID)
    fake.answer("qstat", "qstat-f-empty")
    result = run_to_end(launcher, launcher.launch(req))
    assert (result.outcome, result.message) == (base.LOST, f"PBS no longer knows job {ID} and it left no result")


# ------------------------------------------------------------------------------------------- arrays

ARRAY = "1098[].pbs-server.example.org"


def run_task(job_dir: str, index: int) -> int:
    """Play the compute node for one task of an array: its script with the task's PBS_ARRAYID."""
    import os
    import subprocess

    return subprocess.run(["/bin/sh", "job.sh"], cwd=job_dir, env=dict(os.environ, PBS_ARRAYID=str(index)),
                          check=False).returncode


def array_answers(launcher, reqs, states: str) -> dict[str, str]:
    first = reqs[0]
    root = launcher.endpoint.ensure()
    job_dir = launcher.endpoint.workdir(f"{root}/{first.workflow_global_id}/.arrays/{first.node_id}-{first.attempt}")
    subs = {"job_dir": job_dir, "name": batch_jobs.job_token(first.node_id, first.attempt, job_dir)}
    subs.update({f"task{i}": ARRAY.replace("[]", f"[{i}]") for i in range(3)})
    subs.update({f"state{i}": letter for i, letter in enumerate(states)})
    return subs


@pytest.mark.slow
def test_a_sweep_goes_out_as_one_torque_array_and_each_task_runs_its_member(launcher, fake):
    workflow = unique_workflow()
    reqs = [request(workflow, f"echo '@broker output n={i}'\n", node_id=10 + i, path=f"s[{i}]/w") for i in range(3)]
    subs = array_answers(launcher, reqs, "QQQ")
    fake.answer("qsub", "qsub-array-ok", array_id=ARRAY)
    fake.answer("qstat", "qstat-f-t-array", **subs)
    handles = launcher.launch_array(reqs, Scheduling(cores=1), throttle=2)
    assert [h.job_id for h in handles] == [ARRAY.replace("[]", f"[{i}]") for i in range(3)]
    assert fake.calls("qsub") == ["qsub job.sh"]
    script = open(f"{subs['job_dir']}/job.sh").read()
    assert "#PBS -t 0-2%2" in script and "PBS_ARRAYID" in script
    ended = Ended()
    for handle in handles:
        launcher.watch(handle, ended)
    for i in range(3):
        assert run_task(subs["job_dir"], i) == 0
    fake.answer("qstat", "qstat-f-t-array", **array_answers(launcher, reqs, "CCC"))
    wait_for(lambda: ended.count() == 3, what="the three tasks to end")
    results = [launcher.collect(h) for h in handles]
    assert [(r.outcome, r.outputs) for r in results] == [(base.SUCCEEDED, {"n": i}) for i in range(3)]
    assert set(call for call in fake.calls("qstat")) == {"qstat -f -t"}


@pytest.mark.slow
def test_cancel_of_one_torque_task_runs_qdel_on_that_task_only(launcher, fake):
    reqs = [request(unique_workflow(), "true\n", node_id=20 + i, path=f"s[{i}]/w") for i in range(3)]
    subs = array_answers(launcher, reqs, "RRQ")
    fake.answer("qsub", "qsub-array-ok", array_id=ARRAY)
    fake.answer("qstat", "qstat-f-t-array", **subs)
    handles = launcher.launch_array(reqs)
    fake.answer("qdel", "qdel-ok")
    launcher.cancel(handles[2])
    assert fake.calls("qdel") == [f"qdel {ARRAY.replace('[]', '[2]')}"]


@pytest.mark.slow
def test_a_new_launcher_finds_a_torque_array_task_by_the_arrays_name(launcher, fake, tmp_path):
    reqs = [request(unique_workflow(), "true\n", node_id=30 + i, path=f"s[{i}]/w") for i in range(3)]
    subs = array_answers(launcher, reqs, "RRR")
    fake.answer("qsub", "qsub-array-ok", array_id=ARRAY)
    fake.answer("qstat", "qstat-f-t-array", **subs)
    handles = launcher.launch_array(reqs)
    found = launcher.recover(reqs[1].node_id, 1, reqs[1].workdir, None)
    assert (found.status, found.handle.job_id) == ("running", handles[1].job_id)
    again = launcher.launch_array(reqs)  # a launch retried after a lost reply: found, not submitted again
    assert [h.job_id for h in again] == [h.job_id for h in handles] and fake.calls("qsub") == ["qsub job.sh"]
