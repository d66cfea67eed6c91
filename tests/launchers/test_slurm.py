"""The SLURM launcher against the real single-node cluster, submitting over SSH as the non-root test account.

``sbatch``, ``squeue``, ``sacct`` and ``scancel`` are shims on the host's command directory (the catalogue's
``<batch commands=...>``) that log each call and exec the real command, so the tests count submissions and
scheduler polls; the ``squeue`` shim can also play an unreachable controller.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from broker.config import Settings
from broker.description.model import Scheduling
from broker.elf.elf import read_verdict
from broker.errors import ResourceError
from broker.launchers import base
from broker.launchers import jobs as batch_jobs
from broker.launchers.registry import Launchers
from broker.launchers.remote import Endpoint
from broker.launchers.slurm import SlurmDialect, SlurmLauncher
from broker.resources import Resources
from broker.resources.accounts import Account
from broker.resources.catalogue import AccountRule, BatchOptions, Catalogue, Host
from broker.resources.shell import LocalShell
from broker.resources.sshpool import SshPool
from tests.fixtures import wait_for
from tests.resources.helpers import (LOCAL_ROOT, WAIT_FOR_GO, Ended, account, alive, endpoint, read_int, release,
                                     request, run_to_end, ssh_host, unique_workflow, wait_started)

pytestmark = pytest.mark.slow  # every test here runs real SLURM jobs

COMMANDS = ("sbatch", "squeue", "sacct", "scancel")
SLOW = 200.0  # seconds: SLURM checks time limits about every 30 s after the limit (1 min at least)


@pytest.fixture(scope="module")
def shims(slurm):
    """A command directory whose SLURM commands log each call, then run the real one."""
    directory = Path(f"/tmp/broker-slurm-shims-{uuid.uuid4().hex[:8]}")
    directory.mkdir(mode=0o755)
    log = directory / "calls.log"
    log.touch()
    log.chmod(0o666)  # the shims run as the test account
    for name in COMMANDS:
        real = shutil.which(name)
        down = (f'if [ -e {directory}/down ] && [ "{name}" != sbatch ]; then\n'
                f'  echo "slurm_load_jobs error: Unable to contact slurm controller (connect failure)" >&2; exit 1\n'
                f"fi\n")
        (directory / name).write_text(f"#!/bin/sh\necho {name} >> {log}\n{down}exec {real} \"$@\"\n")
        (directory / name).chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def calls(shims: Path) -> Counter:
    return Counter((shims / "calls.log").read_text().split())


@pytest.fixture(scope="module")
def scratch(slurm):
    """A scratch directory shared with the (same-machine) compute node, removed afterwards."""
    path = slurm.workdir / f"t-{uuid.uuid4().hex[:8]}"
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def cancel_leftovers(scratch):
    """After each test, cancel its jobs still queued (a failed test must not fill the cluster for the next)."""
    yield
    out = subprocess.run(["squeue", "-h", "-r", "-t", "PENDING,RUNNING,SUSPENDED", "-o", "%i|%Z"],
                         capture_output=True,
                         text=True, check=False).stdout
    ours = [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1].startswith(scratch)]
    if ours:
        subprocess.run(["scancel", *ours], check=False)


@pytest.fixture
def host(sshd, slurm, scratch, shims) -> Host:
    return ssh_host(sshd, scratch, name="slurmtest", launcher="slurm",
                    batch=BatchOptions(default_queue=slurm.partition, directives=("begin",), commands=str(shims)))


@pytest.fixture
def pool():
    it = SshPool(max_channels=8, command_timeout=60.0)
    yield it
    it.close()


def make(pool, sshd, host, **options) -> SlurmLauncher:
    options = {"poll_interval": 0.3, "lost_after": 60.0, **options}
    return SlurmLauncher(endpoint(pool, host, account(sshd, host)), **options)


@pytest.fixture
def launcher(pool, sshd, host):
    with make(pool, sshd, host) as it:
        yield it


def squeue_all(user: str) -> list[tuple[str, str, str]]:
    """(job id, name, state) of every job (and array task) of ``user`` SLURM still lists (as root, no shim)."""
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-u", user, "-o", "%i|%j|%T"], capture_output=True,
                         text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines()]


def job_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          check=False).stdout.strip()


def wait_all(launcher, handles, deadline: float = 180.0):
    ended = Ended()
    for handle in handles:
        launcher.watch(handle, ended)
    wait_for(lambda: ended.count() == len({(h.node_id, h.attempt) for h in handles}), deadline=deadline,
             what=f"{len(handles)} attempts to end")
    return [launcher.collect(h) for h in handles]


WHO = 'echo "@broker output who=\\"$(id -un)\\""\necho "@broker output n=$WB_N"\n'


def test_fifty_jobs_and_a_bundle_run_as_the_test_account_and_all_succeed(launcher, slurm, shims):
    before = calls(shims)
    workflow = unique_workflow()
    singles = [request(workflow, WHO, node_id=i, env=(("WB_N", str(i)),)) for i in range(1, 51)]
    members = [request(workflow, WHO, node_id=100 + i, path=f"sweep[{i}]/step", env=(("WB_N", str(100 + i)),))
               for i in range(20)]
    with ThreadPoolExecutor(8) as workers:
        handles = list(workers.map(lambda r: launcher.launch(r, Scheduling(cores=1, walltime=600.0)), singles))
    bundle = launcher.launch_bundle(members, Scheduling(cores=1), parallel=4)
    results = wait_all(launcher, handles + bundle)
    assert {r.outcome for r in results} == {base.SUCCEEDED}
    assert {r.outputs["who"] for r in results} == {slurm.user}
    assert sorted(r.outputs["n"] for r in results) == list(range(1, 51)) + list(range(100, 120))
    assert len({h.job_id for h in bundle}) == 1 and len({h.job_id for h in handles + bundle}) == 51
    assert calls(shims)["sbatch"] - before["sbatch"] == 51
    names = Counter(name for _, name, _ in squeue_all(slurm.user))
    for handle in handles:
        assert names[batch_jobs.job_token(handle.node_id, 1, handle.workdir)] == 1
    job_sh = Path(bundle[0].workdir).parents[2] / ".bundles" / "100-1" / "job.sh"
    assert "#SBATCH --cpus-per-task=4" in job_sh.read_text() and "bundle" in job_sh.read_text()


def test_a_failing_job_gives_its_exit_code(launcher):
    result = run_to_end(launcher, launcher.launch(request(unique_workflow(), "echo bad >&2\nexit 4\n")))
    assert (result.outcome, result.exit_code, result.message) == (base.FAILED, 4, "exit code 4")


def test_cancel_of_a_running_job_kills_its_processes_and_cancels_the_job(launcher):
    handle = launcher.launch(request(unique_workflow(), "sleep 300 &\necho $! > child\nsleep 300\n"))
    pgid = wait_started(handle.workdir)
    child = wait_for(lambda: read_int(f"{handle.workdir}/child"), what="the background child")
    launcher.cancel(handle)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
    wait_for(lambda: not alive(pgid) and not alive(child), what="the payload's processes to be gone")
    wait_for(lambda: job_state(handle.job_id) == "CANCELLED", what="SLURM to say CANCELLED")


def test_cancel_of_a_pending_job_cancels_it_before_it_ever_runs(launcher):
    handle = launcher.launch(request(unique_workflow(), "true\n"),
                             Scheduling(directives=(("begin", "now+3600"),)))
    wait_for(lambda: job_state(handle.job_id) == "PENDING", what="the job to be pending")
    launcher.cancel(handle)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.CANCELLED, "cancelled")
    assert not Path(handle.workdir, "pid").exists()


def test_a_node_over_its_elf_timeout_is_killed(launcher):
    handle = launcher.launch(request(unique_workflow(), "sleep 300\n", timeout=1.0))
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.message) == (base.TIMEOUT, "killed after the timeout of 1 s")


def test_a_job_over_its_slurm_time_limit_times_out(launcher):
    handle = launcher.launch(request(unique_workflow(), "sleep 600\n"), Scheduling(walltime=60.0))
    assert "#SBATCH --time=00:01:00" in Path(handle.workdir, "job.sh").read_text()
    result = run_to_end(launcher, handle, deadline=SLOW)
    assert result.outcome == base.TIMEOUT
    assert result.message.startswith("killed by Slurm at the job's time limit (TIMEOUT")


def _squeue_per_round(launcher, shims, rounds: int = 5) -> float:
    """squeue runs per poller round, measured over ``rounds`` rounds."""
    wait_for(lambda: launcher.poller.rounds >= 1, what="a first poll")
    start_rounds, start_calls = launcher.poller.rounds + 1, None
    wait_for(lambda: launcher.poller.rounds >= start_rounds, what="a poll round to end")
    start_calls = calls(shims)["squeue"]
    target = start_rounds + rounds
    wait_for(lambda: launcher.poller.rounds >= target, what=f"{rounds} poll rounds")
    # a round may be under way while we read: count whole rounds only
    done_rounds = launcher.poller.rounds - start_rounds
    return (calls(shims)["squeue"] - start_calls) / done_rounds


def test_squeue_runs_stay_at_one_per_poll_as_jobs_grow_from_10_to_200(pool, sshd, host, shims):
    per_round = {}
    with make(pool, sshd, host, poll_interval=0.5) as launcher:
        for count in (10, 200):
            workflow = unique_workflow()
            with ThreadPoolExecutor(8) as workers:
                handles = list(workers.map(lambda i: launcher.launch(request(workflow, WAIT_FOR_GO, node_id=i)),
                                           range(1, count + 1)))
            per_round[count] = _squeue_per_round(launcher, shims)
            for handle in handles:
                release(handle.workdir)
            results = wait_all(launcher, handles, deadline=300.0)
            assert {r.outcome for r in results} == {base.SUCCEEDED}
    assert per_round == {10: 1.0, 200: 1.0}


def test_a_new_launcher_recovers_every_job_and_submits_none_twice(pool, sshd, host, shims, slurm):
    workflow = unique_workflow()
    requests = [request(workflow, WAIT_FOR_GO, node_id=i) for i in range(1, 31)]
    old_pool = SshPool()
    old = make(old_pool, sshd, host)
    handles = [old.launch(r) for r in requests]
    # Broker A dies in the middle of a launch, after the files were written and before sbatch ran...
    unsubmitted = request(workflow, WAIT_FOR_GO, node_id=31)
    old.endpoint.agent("prepare", {"items": [{"workdir": old.endpoint.workdir(unsubmitted.workdir),
                                              "record": {"token": "x"}, "files": {}}]})
    # ...and the reply of one submission never reached it (the job exists, the broker does not know).
    lost_reply = request(workflow, WAIT_FOR_GO, node_id=32)
    lost_handle = old.launch(lost_reply)
    old.close()
    old_pool.close()
    submitted = calls(shims)["sbatch"]

    with make(pool, sshd, host) as new:
        found = [new.recover(h.node_id, 1, r.workdir, h.job_id if h.node_id > 5 else None)
                 for h, r in zip(handles, requests)]
        assert [f.status for f in found] == ["running"] * 30
        assert [f.handle.job_id for f in found] == [h.job_id for h in handles]
        assert new.recover(31, 1, unsubmitted.workdir, None).status == "absent"
        again = new.launch(lost_reply)  # the engine retries the launch it never heard back from
        assert again.job_id == lost_handle.job_id
        assert calls(shims)["sbatch"] == submitted  # recovery submitted nothing
        late = new.launch(unsubmitted)  # prepared, never submitted: submitted now, once
        assert calls(shims)["sbatch"] == submitted + 1
        running = [f.handle for f in found] + [again, late]
        for handle in running:
            release(handle.workdir)
        results = wait_all(new, running)
    assert {r.outcome for r in results} == {base.SUCCEEDED}
    names = Counter(name for _, name, _ in squeue_all(slurm.user))
    for handle in running:
        assert names[batch_jobs.job_token(handle.node_id, 1, handle.workdir)] == 1


def test_an_unreachable_controller_leaves_jobs_unknown_never_failed(launcher, shims):
    pending = launcher.launch(request(unique_workflow(), "true\n"), Scheduling(directives=(("begin", "now+3600"),)))
    running = launcher.launch(request(unique_workflow(), WAIT_FOR_GO, node_id=2))
    wait_started(running.workdir)
    ended = Ended()
    launcher.watch(pending, ended)
    launcher.watch(running, ended)
    (shims / "down").touch()
    try:
        rounds = launcher.poller.rounds
        wait_for(lambda: launcher.poller.rounds >= rounds + 5, what="5 polls with the controller down")
        assert ended.count() == 0
        release(running.workdir)  # its status file is the primary channel: it still ends, with its result
        wait_for(lambda: ended.has(running.node_id), what="the running job to end")
        assert launcher.collect(running).outcome == base.SUCCEEDED
        rounds = launcher.poller.rounds
        wait_for(lambda: launcher.poller.rounds >= rounds + 3, what="3 more polls")
        assert not ended.has(pending.node_id)
    finally:
        (shims / "down").unlink()
    launcher.cancel(pending)
    wait_for(lambda: ended.has(pending.node_id), what="the pending job to end")
    assert launcher.collect(pending).outcome == base.CANCELLED


def test_a_cluster_reached_without_ssh_runs_jobs_as_the_owners_mapped_account(slurm, scratch, test_accounts):
    # a root broker: sbatch, the elf's installation and the job all run as the account the catalogue maps
    first = test_accounts.first
    host = Host(name="local-slurm", launcher="slurm", scratch=f"{scratch}/mapped",
                batch=BatchOptions(default_queue=slurm.partition), accounts=(AccountRule("alice", first.login),))
    resources = Resources(Settings(), catalogue=Catalogue(hosts=(host,), default="local-slurm"))
    launchers = Launchers(resources, local_root=LOCAL_ROOT)
    try:
        launcher = launchers.launcher("local-slurm", "alice")
        handle = launcher.launch(request(unique_workflow(), WHO, env=(("WB_N", "2"),)))
        assert run_to_end(launcher, handle).outputs == {"who": first.login, "n": 2}
        root = Path(scratch) / "mapped" / first.login
        assert {p.stat().st_uid for p in (root, *root.joinpath(".broker").iterdir())} == {first.uid}
        with pytest.raises(ResourceError, match="user 'bob' has no account on host 'local-slurm'"):
            launchers.launcher("local-slurm", "bob")
    finally:
        launchers.close()
        resources.close()


def test_a_cluster_reached_without_ssh_runs_jobs_as_the_brokers_own_user(slurm, scratch, tmp_path):
    host = Host(name="local-slurm", launcher="slurm", scratch=f"{scratch}/local",
                batch=BatchOptions(default_queue=slurm.partition))
    own = Account(host="local-slurm", login="root", local=True)
    with SlurmLauncher(Endpoint(host, own, LocalShell("root@local-slurm"), local_root="/nonexistent/broker-engine-work"),
                       poll_interval=0.3) as launcher:
        ok = launcher.launch(request(unique_workflow(), WHO, env=(("WB_N", "1"),)))
        bad = launcher.launch(request(unique_workflow(), "exit 3\n", node_id=2))
        assert run_to_end(launcher, ok).outputs == {"who": "root", "n": 1}
        assert run_to_end(launcher, bad).exit_code == 3
    # sacct -c (the jobcomp file root may open) knows both once they left the queue
    dialect = SlurmDialect()
    history = dialect.parse_history(LocalShell().run(dialect.history("root", [ok.job_id, bad.job_id])))
    assert (history[ok.job_id].state, history[ok.job_id].exit_code) == (batch_jobs.COMPLETED, 0)
    assert (history[bad.job_id].state, history[bad.job_id].exit_code) == (batch_jobs.FAILED, 3)
    assert history[ok.job_id].workdir == ok.workdir


def test_a_cancel_after_the_payload_ended_by_itself_keeps_its_result_and_cancels_no_job(launcher, shims):
    handle = launcher.launch(request(unique_workflow(), "echo '@broker output n=1'\n"))
    # the elf's verdict: its payload ended by itself (the job may still be writing the status, or be over)
    wait_for(lambda: read_verdict(handle.workdir) == "exited", what="the payload to end")
    before = calls(shims)["scancel"]
    launcher.cancel(handle)
    result = run_to_end(launcher, handle)
    assert (result.outcome, result.outputs) == (base.SUCCEEDED, {"n": 1})
    assert calls(shims)["scancel"] == before  # nothing to kill: the job ends by itself
