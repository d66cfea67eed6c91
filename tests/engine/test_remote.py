"""Whole workflows on remote resources through the engine: an SSH host and the SLURM cluster, as the test account.

The catalogue maps the broker user "alice" to the non-root test account; the SLURM commands on the host are
shims that log every call and exec the real command, so the tests count submissions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from broker.states import WorkflowState
from tests.engine.helpers import Broker, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs real SLURM jobs

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("sbatch", "squeue", "sacct", "scancel")
#: seconds: a workflow of SLURM jobs needs a few scheduling rounds (more on a busy machine and shared cluster)
PATIENCE = 240.0


def run(remote: Broker, document: bytes) -> tuple[int, WorkflowState]:
    """Submit ``document`` and wait for its end, as Broker.run does, with this module's patience."""
    workflow_id = remote.submit(document)
    return workflow_id, remote.wait(workflow_id, deadline=PATIENCE)


@pytest.fixture(scope="module")
def shims(slurm):
    directory = Path(f"/tmp/broker-engine-shims-{uuid.uuid4().hex[:8]}")
    directory.mkdir(mode=0o755)
    log = directory / "calls.log"
    log.touch()
    log.chmod(0o666)  # the shims run as the test account
    for name in COMMANDS:
        (directory / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {shutil.which(name)} "$@"\n')
        (directory / name).chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def sbatch_calls(shims: Path) -> int:
    return sum(1 for line in (shims / "calls.log").read_text().splitlines() if line.startswith("sbatch"))


@pytest.fixture
def scratch(slurm):
    path = slurm.workdir / f"e-{uuid.uuid4().hex[:8]}"
    yield path
    out = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, check=False).stdout
    ours = [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1].startswith(str(path))]
    if ours:
        subprocess.run(["scancel", *ours], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def catalogue(tmp_path, sshd, slurm, shims, scratch) -> Path:
    ssh = f'<ssh address="{sshd.host}" port="{sshd.port}" knownHosts="{sshd.known_hosts}"/>'
    account = f'<account user="alice" login="{sshd.user}" key="{sshd.key}"/>'
    path = tmp_path / "hosts.xml"
    path.write_text(f"""<hosts xmlns="urn:workflow-broker:hosts:1.0" default="localhost">
      <host name="localhost" launcher="local"/>
      <host name="sshtest" launcher="ssh" maxJobs="8">{ssh}<scratch>{scratch}/ssh</scratch>{account}</host>
      <host name="cluster" launcher="slurm" maxJobs="40">{ssh}<scratch>{scratch}/slurm</scratch>
        <batch defaultQueue="{slurm.partition}" commands="{shims}"/>{account}</host>
    </hosts>""")
    return path


def remote_broker(url: str, tmp: Path, catalogue: Path, **engine) -> Broker:
    broker = Broker(url, tmp, max_in_flight=64, **engine)
    settings = broker.settings
    broker.settings = dataclasses.replace(settings, hosts=dataclasses.replace(
        settings.hosts, catalogue=str(catalogue), batch_poll_interval=0.5, ssh_poll_interval=0.3))
    return broker


@pytest.fixture
def remote(migrated_url, tmp_path, catalogue):
    broker = remote_broker(migrated_url, tmp_path, catalogue).start()
    yield broker
    broker.stop()


WHO = "echo \"@broker output who=\\\"$(id -un)\\\"\""


def on(host: str, body: str) -> str:
    return f"<resources><host>{host}</host></resources>{body}"


def test_a_workflow_of_fifty_slurm_jobs_with_a_bundled_sweep_runs_as_the_test_account(remote, slurm, shims):
    before = sbatch_calls(shims)
    fan = "".join(f'<node id="f{i}"><dependsOn node="prep"/><payload type="sh">{WHO}</payload>'
                  f'<output name="who"/></node>' for i in range(10))
    doc = workflow(on("cluster", f"""
      <node id="prep"><payload type="sh">{WHO}</payload><output name="who"/></node>
      <sweep id="s" bundle="10"><dependsOn node="prep"/>
        <param name="i"><range from="1" to="40"/></param>
        <body><node id="work"><payload type="sh">{WHO}; echo "@broker output i=$WB_PARAM_i"</payload>
          <output name="who"/><output name="i"/></node></body></sweep>
      {fan}
      <node id="join"><dependsOn node="s"/>{"".join(f'<dependsOn node="f{i}"/>' for i in range(10))}
        <payload type="sh">{WHO}</payload><output name="who"/></node>"""))
    wf, state = run(remote, doc)
    assert state is WorkflowState.SUCCEEDED, remote.node_states(wf)
    nodes = remote.nodes(wf)
    work = [n for n in nodes.values() if n.kind == "node"]
    assert len(work) == 52
    assert {n.outputs["who"] for n in work} == {slurm.user}  # never the broker's own account
    assert sorted(int(nodes[f"s[{i}]/work"].outputs["i"]) for i in range(40)) == list(range(1, 41))
    # 40 members in bundles of at most 10: far fewer submissions than nodes
    bundles = {nodes[f"s[{i}]/work"].job_id for i in range(40)}
    assert len(bundles) <= 10 and sbatch_calls(shims) - before == 12 + len(bundles)


def test_a_failing_slurm_job_fails_its_node_with_its_exit_code(remote):
    wf, state = run(remote, workflow(on("cluster", '<node id="bad"><payload type="sh">exit 3</payload></node>')))
    assert state is WorkflowState.FAILED
    node = remote.nodes(wf)["bad"]
    assert (node.state, node.exit_code) == ("failed", 3)


def test_cancelling_a_running_slurm_job_cancels_the_node(remote, slurm):
    wf = remote.submit(workflow(on("cluster", '<node id="long"><payload type="sh">exec sleep 300</payload></node>')))
    wait_for(lambda: remote.node_states(wf)["long"] == "running", deadline=PATIENCE, what="the job to run")
    job = remote.nodes(wf)["long"].job_id
    remote.engine.cancel(wf, "user:alice")
    assert remote.wait(wf, deadline=PATIENCE) is WorkflowState.CANCELLED

    def gone():
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        return out in ("", "CANCELLED", "COMPLETED", "FAILED")
    wait_for(gone, deadline=60, what=f"job {job} to leave the queue")


def test_a_slurm_node_over_its_timeout_is_killed_and_fails(remote):
    doc = workflow(on("cluster", '<node id="slow"><execution><timeout>2s</timeout></execution>'
                                 '<payload type="sh">exec sleep 300</payload></node>'))
    wf, state = run(remote, doc)
    assert state is WorkflowState.FAILED
    assert "timeout" in remote.nodes(wf)["slow"].message


def test_a_workflow_on_the_ssh_host_stages_in_and_out_through_sftp(remote, sshd, scratch, tmp_path):
    # beside the scratch tree, which the test account creates itself
    remote_dir = scratch.parent / f"{scratch.name}-data"
    remote_dir.mkdir()
    (remote_dir / "in.txt").write_text("hello over sftp\n")
    shutil.chown(remote_dir, sshd.user)
    shutil.chown(remote_dir / "in.txt", sshd.user)
    doc = workflow(on("sshtest", f"""
      <node id="copy">
        <payload type="sh">{WHO}; tr a-z A-Z &lt; in.txt > out.txt</payload>
        <stageIn source="sftp://sshtest{remote_dir}/in.txt" target="in.txt"/>
        <stageOut source="out.txt" target="file://{tmp_path}/result.txt"/>
        <output name="who"/>
      </node>"""))
    wf, state = run(remote, doc)
    assert state is WorkflowState.SUCCEEDED, remote.nodes(wf)["copy"].message
    assert (tmp_path / "result.txt").read_text() == "HELLO OVER SFTP\n"
    assert remote.nodes(wf)["copy"].outputs["who"] == sshd.user
    shutil.rmtree(remote_dir, ignore_errors=True)


def test_deleting_a_workflow_removes_its_directories_on_the_ssh_host_as_the_owner(remote, sshd, scratch, catalogue,
                                                                                   tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the test puts a directory the test account cannot remove in its tree")
    wf, state = run(remote, workflow(on("sshtest", f'<node id="a"><payload type="sh">{WHO}; echo x > f</payload>'
                                                  '<output name="who"/></node>')))
    assert state is WorkflowState.SUCCEEDED
    gid = remote.workflow(wf).global_id
    remote_dir = scratch / "ssh" / sshd.user / gid
    assert (remote_dir / "a").is_dir()
    # root's, inside the account's tree: the account cannot remove it (the broker's own rights could)
    (remote_dir / "locked").mkdir()
    (remote_dir / "locked" / "file").write_text("x")
    other = scratch / "ssh" / sshd.user / "wf-000000000000000000"  # another workflow's: must stay
    subprocess.run(["runuser", "-u", sshd.user, "--", "mkdir", str(other)], check=True)
    remote.stop()  # the command line refuses to delete beside a running broker
    config = tmp_path / "broker.ini"
    config.write_text(f"[hosts]\ncatalogue = {catalogue}\n[engine]\nuser = alice\nworkdir = {tmp_path / 'work'}\n")

    def admin_delete(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "broker.cli", "admin", "delete", *args, "--yes",
                               "--db", remote.url], env=dict(os.environ, BROKER_CONFIG=str(config)),
                              capture_output=True, text=True, timeout=120)

    done = admin_delete("--id", gid)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cannot remove the work directory of {gid} on sshtest yet" in done.stderr
    assert not (remote_dir / "a").exists() and (remote_dir / "locked").is_dir() and other.is_dir()
    assert not (tmp_path / "work" / gid).exists()
    shutil.rmtree(remote_dir / "locked")
    again = admin_delete("--completed")  # any deletion first finishes what the previous ones left
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"removed the remaining work directories of {gid}" in again.stdout
    assert not remote_dir.exists() and other.is_dir()


def test_an_sftp_source_outside_the_owners_reach_is_refused(remote, scratch):
    doc = workflow(on("sshtest", '<node id="copy"><payload type="sh">true</payload>'
                                 '<stageIn source="sftp://sshtest/etc/../etc/shadow" target="x"/></node>'))
    wf, state = run(remote, doc)
    assert state is WorkflowState.FAILED
    assert "stage-in failed" in remote.nodes(wf)["copy"].message


def test_a_broker_killed_mid_run_never_submits_a_job_twice_and_all_complete(migrated_url, tmp_path, catalogue,
                                                                           shims):
    """kill -9 of `broker run` while SLURM jobs run; the rerun re-attaches by job name and id."""
    doc = workflow(on("cluster", "".join(
        f'<node id="n{i}"><payload type="sh">i=0; while [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done</payload>'
        f'</node>' for i in range(12))), name="crash")
    before = sbatch_calls(shims)
    killed_and_rerun(doc, migrated_url, tmp_path, catalogue, lambda: sbatch_calls(shims) - before >= 6,
                     "half the jobs to be submitted")
    submitted = [line for line in (shims / "calls.log").read_text().splitlines() if line.startswith("sbatch")]
    assert len(submitted) - before == 12  # one submission per node, crash or not


def test_a_fragment_spawned_on_the_ssh_host_is_fetched_with_the_result_and_its_nodes_run_there(remote, sshd):
    fragment = ('<workflow xmlns="urn:workflow-broker:workflow:1.0" name="more">'
                '<node id="child"><payload type="sh">echo "@broker output who=\\"$(id -un)\\""</payload>'
                '<output name="who"/></node></workflow>')
    doc = workflow(on("sshtest", f"""
      <node id="plan"><payload type="sh"><![CDATA[printf '%s\\n' '{fragment}' > "$WB_WORKDIR/f.xml"
        echo "@broker spawn f.xml"]]></payload></node>
      <node id="link"><payload type="sh">ln -s /etc/hostname "$WB_WORKDIR/l.xml"; echo "@broker spawn l.xml"</payload>
      </node>"""))
    wf, state = run(remote, doc)
    nodes = remote.nodes(wf)
    assert (nodes["plan"].state, nodes["plan"].members) == ("succeeded", 1), nodes["plan"].message
    assert nodes["plan/child"].state == "succeeded" and nodes["plan/child"].outputs["who"] == sshd.user
    assert nodes["plan/child"].host.endswith("@sshtest")
    # read on the host by the elf, which follows no symlink there either
    assert nodes["link"].message == "the spawned fragment l.xml could not be read: it is a symlink (not followed)"
    assert state is WorkflowState.FAILED


def killed_and_rerun(doc: bytes, url: str, tmp_path: Path, catalogue: Path, ready, what: str) -> None:
    """`broker run` of ``doc`` as alice, kill -9 once ``ready()`` holds, then run again: the rerun resumes and
    succeeds (exit 0)."""
    path = tmp_path / "wf.xml"
    path.write_bytes(doc)
    config = tmp_path / "broker.ini"
    config.write_text(f"[hosts]\ncatalogue = {catalogue}\nbatch_poll_interval = 0.5\n"
                      f"[engine]\nmax_in_flight = 64\nuser = alice\n")
    env = dict(os.environ, BROKER_CONFIG=str(config))
    command = [sys.executable, "-m", "broker.cli", "run", str(path), "--db", url, "--workdir", str(tmp_path / "work")]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(ready, deadline=PATIENCE, what=what)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PATIENCE)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming" in rerun.stdout
