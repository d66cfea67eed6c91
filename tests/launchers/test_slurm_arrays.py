"""Sweep members as SLURM job arrays, against the real single-node cluster over SSH as the test account.

One ``sbatch`` for many members, a task per member (its own queue entry, accounting and cancel), the
array's throttle, and a new launcher (a restarted broker) finding every task by the array's name and
directory without submitting anything twice. The fixtures (command shims counting calls, scratch, host)
are the SLURM launcher tests' own.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from broker.description.model import Scheduling
from broker.launchers import base
from broker.resources.sshpool import SshPool
from tests.fixtures import wait_for
from tests.launchers.test_slurm import (calls, cancel_leftovers, host, job_state, launcher, make, pool,  # noqa: F401
                                        scratch, shims, squeue_all, wait_all)
from tests.resources.helpers import WAIT_FOR_GO, release, request, unique_workflow

pytestmark = pytest.mark.slow  # real SLURM jobs

WHO = 'echo "@broker output who=\\"$(id -un)\\""\necho "@broker output n=$WB_N"\n'


def members(workflow: str, count: int, text: str = WHO, first_id: int = 100) -> list[base.LaunchRequest]:
    return [request(workflow, text, node_id=first_id + i, path=f"sweep[{i}]/step", env=(("WB_N", str(i)),))
            for i in range(count)]


def array_dir(handle: base.LaunchHandle, first: base.LaunchRequest) -> Path:
    return Path(handle.workdir).parents[2] / ".arrays" / f"{first.node_id}-{first.attempt}"


def test_twenty_members_go_out_as_one_array_of_twenty_tasks_with_its_throttle(launcher, slurm, shims):
    before = calls(shims)["sbatch"]
    requests = members(unique_workflow(), 20)
    requests[7] = request(requests[7].workflow_global_id, "echo bad >&2\nexit 3\n", node_id=107,
                          path="sweep[7]/step")
    handles = launcher.launch_array(requests, Scheduling(cores=1), throttle=4)
    array_id = handles[0].job_id.partition("_")[0]
    assert [h.job_id for h in handles] == [f"{array_id}_{i}" for i in range(20)]
    assert calls(shims)["sbatch"] - before == 1
    script = (array_dir(handles[0], requests[0]) / "job.sh").read_text()
    assert "#SBATCH --array=0-19%4" in script and "SLURM_ARRAY_TASK_ID" in script
    # every task is in the queue under the array's one name, each with its own id
    names = Counter(name for job_id, name, _ in squeue_all(slurm.user) if job_id.startswith(f"{array_id}_"))
    assert list(names.values()) == [20]
    results = wait_all(launcher, handles)
    assert [r.outcome for r in results] == [base.SUCCEEDED] * 7 + [base.FAILED] + [base.SUCCEEDED] * 12
    assert (results[7].exit_code, results[7].message) == (3, "exit code 3")
    assert {r.outputs["who"] for i, r in enumerate(results) if i != 7} == {slurm.user}
    assert [r.outputs["n"] for i, r in enumerate(results) if i != 7] == [i for i in range(20) if i != 7]
    assert {job_state(h.job_id) for i, h in enumerate(handles) if i != 7} == {"COMPLETED"}


def test_cancel_of_one_member_cancels_its_task_only(launcher):
    requests = members(unique_workflow(), 4, WAIT_FOR_GO)
    handles = launcher.launch_array(requests, Scheduling(cores=1))
    wait_for(lambda: all(Path(h.workdir, "pid").exists() for h in handles), deadline=120,
             what="the four tasks to start")
    launcher.cancel(handles[1])
    wait_for(lambda: job_state(handles[1].job_id) in ("CANCELLED", "COMPLETED", "FAILED"), deadline=60,
             what="the cancelled task to leave the running state")
    assert {job_state(h.job_id) for h in (handles[0], handles[2], handles[3])} == {"RUNNING"}
    for h in (handles[0], handles[2], handles[3]):
        release(h.workdir)
    results = wait_all(launcher, handles)
    assert [r.outcome for r in results] == [base.SUCCEEDED, base.CANCELLED, base.SUCCEEDED, base.SUCCEEDED]


def test_cancel_of_a_pending_task_cancels_it_before_it_runs(launcher):
    requests = members(unique_workflow(), 3, "true\n")
    handles = launcher.launch_array(requests, Scheduling(directives=(("begin", "now+3600"),)))
    wait_for(lambda: job_state(handles[2].job_id) == "PENDING", what="the task to be pending")
    launcher.cancel(handles[2])
    launcher.cancel(handles[0])
    launcher.cancel(handles[1])
    results = wait_all(launcher, handles)
    assert {(r.outcome, r.message) for r in results} == {(base.CANCELLED, "cancelled")}
    assert not any(Path(h.workdir, "pid").exists() for h in handles)


def test_a_new_launcher_finds_every_task_and_submits_nothing_twice(pool, sshd, host, shims):
    requests = members(unique_workflow(), 6, WAIT_FOR_GO)
    old_pool = SshPool()
    old = make(old_pool, sshd, host)
    handles = old.launch_array(requests, Scheduling(cores=1))
    old.close()
    old_pool.close()
    submitted = calls(shims)["sbatch"]
    with make(pool, sshd, host) as new:
        # the engine knows the task ids of some (their running state was committed), not of others
        found = [new.recover(r.node_id, 1, r.workdir, h.job_id if i % 2 else None)
                 for i, (h, r) in enumerate(zip(handles, requests))]
        assert [f.status for f in found] == ["running"] * 6
        assert [f.handle.job_id for f in found] == [h.job_id for h in handles]
        # a launch retried after a lost reply finds the array by its name and directory
        again = new.launch_array(requests, Scheduling(cores=1))
        assert [h.job_id for h in again] == [h.job_id for h in handles]
        assert calls(shims)["sbatch"] == submitted
        for h in handles:
            release(h.workdir)
        results = wait_all(new, [f.handle for f in found])
    assert {r.outcome for r in results} == {base.SUCCEEDED}
