"""Batch job specifications: profile to directives, host defaults, and every value checked before a script."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from broker.config import Settings
from broker.description.model import Scheduling
from broker.errors import ResourceError
from broker.launchers import jobs as batch_jobs
from broker.launchers.registry import Launchers
from broker.launchers.slurm import SlurmDialect
from broker.resources import Resources
from broker.resources.catalogue import BatchOptions, Catalogue, Host, SshAccess
from broker.resources.shell import Completed

HPC = Host(name="hpc", launcher="slurm", scratch="/s",
           batch=BatchOptions(default_queue="normal", queues=("normal", "gpu"), directives=("qos", "exclusive")))


def spec(scheduling: Scheduling, **kw) -> batch_jobs.JobSpec:
    return batch_jobs.job_spec(HPC, scheduling, name="wb-1-1-abcd", comment="wf-x/n:1", job_dir="/s/u/wf-x/n/1", **kw)


def test_a_profile_becomes_sbatch_directives_with_host_defaults_filled_in():
    job = spec(Scheduling(nodes=2, cores=4, memory=1536 * 1024**2 + 1, walltime=90061.5, account="chem",
                          directives=(("qos", "high"), ("exclusive", None))))
    assert SlurmDialect().directives(job) == [
        "#SBATCH --job-name=wb-1-1-abcd", "#SBATCH --comment=wf-x/n:1", "#SBATCH --chdir=/s/u/wf-x/n/1",
        "#SBATCH --output=/s/u/wf-x/n/1/job.out", "#SBATCH --error=/s/u/wf-x/n/1/job.err", "#SBATCH --ntasks=1",
        "#SBATCH --partition=normal", "#SBATCH --nodes=2", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=1537M",
        "#SBATCH --time=1-01:01:02", "#SBATCH --account=chem", "#SBATCH --qos=high", "#SBATCH --exclusive"]


def test_a_bundle_asks_for_its_members_at_once_and_their_waves_of_walltime():
    job = spec(Scheduling(cores=2, memory=1024**3, walltime=600.0), parallel=4, waves=3)
    assert (job.cores, job.memory, job.walltime) == (8, 4 * 1024**3, 1800.0)


def test_an_array_asks_for_its_tasks_and_throttle_and_each_task_writes_its_own_files():
    lines = SlurmDialect().directives(spec(Scheduling(cores=1), array=(1000, 16)))
    assert "#SBATCH --array=0-999%16" in lines
    assert "#SBATCH --output=/s/u/wf-x/n/1/task-%a.out" in lines
    assert "#SBATCH --error=/s/u/wf-x/n/1/task-%a.err" in lines
    assert "#SBATCH --array=0-2" in SlurmDialect().directives(spec(Scheduling(), array=(3, 0)))
    assert batch_jobs.JobRef("7_3", "/s/a", "t", task=3).err_file == "/s/a/task-3.err"


def test_an_array_body_selects_a_member_by_the_task_index_and_quotes_every_word():
    body = batch_jobs.array_body("SLURM_ARRAY_TASK_ID", "/s/arr",
                                 [("/s/a b/1", "elf run"), ("/s/c';x/1", "elf run")])
    assert body == ['case "${SLURM_ARRAY_TASK_ID:-}" in',
                    "0) exec >/s/arr/task-0.out 2>/s/arr/task-0.err; cd '/s/a b/1' || exit 96; exec elf run ;;",
                    "1) exec >/s/arr/task-1.out 2>/s/arr/task-1.err; cd '/s/c'\"'\"';x/1' || exit 96; "
                    "exec elf run ;;",
                    '*) echo "no member for task ${SLURM_ARRAY_TASK_ID:-}" >&2; exit 97 ;;', "esac"]


def test_the_queue_lists_array_tasks_one_per_line_and_history_asks_once_per_array():
    dialect = SlurmDialect()
    assert "-r" in dialect.query("u")
    line = dialect.history("u", ["12_3", "12_7", "15"])
    assert "-j 12,15 " in line and "12_3" not in line
    assert dialect.task_id("12", 4) == "12_4"
    jobs = dialect.parse_query(Completed(0, b"12_0|RUNNING|None|wb-1-1-abcd|/d\n12_1|PENDING|JobArrayTaskLimit|"
                                            b"wb-1-1-abcd|/d\n", b""))
    assert (jobs["12_0"].state, jobs["12_1"].state) == (batch_jobs.RUNNING, batch_jobs.PENDING)


@pytest.mark.parametrize("scheduling, message", [
    (Scheduling(queue="normal\n#SBATCH --uid=0"), "queue 'normal\\n#SBATCH --uid=0' is not a plain scheduler value"),
    (Scheduling(queue="debug"), "host 'hpc' has no queue 'debug' (queues: normal, gpu)"),
    (Scheduling(account="a b"), "account 'a b' is not a plain scheduler value"),
    (Scheduling(directives=(("uid", "0"),)), "host 'hpc' does not allow directive 'uid' (allowed: qos, exclusive)"),
    (Scheduling(directives=(("qos", "x;y"),)), "directive qos 'x;y' is not a plain scheduler value"),
])
def test_a_value_that_is_not_a_plain_token_or_not_allowed_never_reaches_a_script(scheduling, message):
    with pytest.raises(ResourceError) as caught:
        spec(scheduling)
    assert message in str(caught.value) and caught.value.retryable is False


def test_job_tokens_are_deterministic_short_and_differ_between_work_directories():
    a = batch_jobs.job_token(1234, 2, "/s/u/wf-aaa/n/2")
    assert a == batch_jobs.job_token(1234, 2, "/s/u/wf-aaa/n/2") and a.startswith("wb-1234-2-") and len(a) == 14
    assert a != batch_jobs.job_token(1234, 2, "/s/u/wf-bbb/n/2")


def test_a_script_refuses_a_directive_line_that_spans_lines():
    with pytest.raises(ResourceError, match="spans lines"):
        batch_jobs.script(["#SBATCH --comment=a\nrm -rf ~"], ["true"])
    assert batch_jobs.script(["#SBATCH --ntasks=1"], ["exec 'a b'"]) == "#!/bin/sh\n#SBATCH --ntasks=1\n\nexec 'a b'\n"


@pytest.fixture
def routed(tmp_path) -> Iterator[tuple[Resources, Launchers]]:
    """Resources and launchers of a local host "laptop" (the default) and an SSH host "lab" (alice's account)."""
    (tmp_path / "kh").write_text("")
    catalogue = Catalogue(hosts=(Host("laptop", "local", max_jobs=4),
                                 Host("lab", "ssh", max_jobs=16, ssh=SshAccess("127.0.0.1", 1, str(tmp_path / "kh")),
                                      scratch="w")), default="laptop")
    resources = Resources(Settings(), catalogue=catalogue, accounts={("alice", "lab"): ("alice", None)})
    launchers = Launchers(resources)
    try:
        yield resources, launchers
    finally:
        launchers.close()
        resources.close()


def test_resources_route_hosts_to_launchers_and_expose_the_per_host_limit(routed):
    resources, launchers = routed
    assert (resources.max_jobs("laptop"), resources.max_jobs("lab")) == (4, 16)
    assert resources.resolve((), Scheduling()).name == "laptop"
    local = launchers.launcher("laptop", "alice")  # the shared local launcher, starting as alice's account
    assert launchers.launcher_of("localhost") is launchers.local_launcher()
    assert local.collect == launchers.local_launcher().collect
    remote = launchers.launcher("lab", "alice")  # made without connecting: connections open on first use
    assert launchers.launcher("lab", "alice") is remote and launchers.launcher_of("alice@lab") is remote
    assert resources.pool.opened() == 0
    with pytest.raises(ResourceError, match="no launcher for bob@lab yet"):
        launchers.launcher_of("bob@lab")
    with pytest.raises(ResourceError, match="user 'bob' has no account on host 'lab'"):
        launchers.launcher("lab", "bob")


def test_closed_launchers_make_no_new_launcher(routed):
    # An exit callback fired by the local launcher's watcher while close() joins it asked for the local
    # launcher again, got a new one, and that one's thread was never stopped: the process did not end
    resources, launchers = routed
    launchers.local_launcher()
    threads = threading.active_count()
    launchers.close()
    assert threading.active_count() < threads  # the watcher went
    for ask in (launchers.local_launcher, lambda: launchers.launcher_of("localhost"),
                lambda: launchers.launcher("lab", "alice"), lambda: launchers.launcher("laptop", "alice")):
        with pytest.raises(ResourceError, match="the broker is stopping"):
            ask()
    assert threading.active_count() < threads
