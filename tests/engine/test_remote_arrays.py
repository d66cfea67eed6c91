"""Sweeps on the SLURM cluster through the engine: members go out as job arrays, one submission for many.

The fixtures (command shims logging every call, scratch, the SSH account of "alice") are those of
tests/engine/test_remote.py; the catalogue here sets the cluster's array size and throttle.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.states import WorkflowState
from tests.engine.helpers import workflow
from tests.engine.test_remote import (PATIENCE, WHO, killed_and_rerun, on, remote_broker, sbatch_calls,  # noqa: F401
                                      scratch, shims)

pytestmark = pytest.mark.slow  # real SLURM jobs


@pytest.fixture
def catalogue(tmp_path, sshd, slurm, shims, scratch) -> Path:  # noqa: F811
    ssh = f'<ssh address="{sshd.host}" port="{sshd.port}" knownHosts="{sshd.known_hosts}"/>'
    account = f'<account user="alice" login="{sshd.user}" key="{sshd.key}"/>'
    path = tmp_path / "hosts.xml"
    path.write_text(f"""<hosts xmlns="urn:workflow-broker:hosts:1.0" default="localhost">
      <host name="localhost" launcher="local"/>
      <host name="cluster" launcher="slurm" maxJobs="4">{ssh}<scratch>{scratch}/slurm</scratch>
        <batch defaultQueue="{slurm.partition}" commands="{shims}" maxArraySize="25" arrayThrottle="6"/>
        {account}</host>
    </hosts>""")
    return path


def sweep(count: int, body: str, extra: str = "") -> bytes:
    return workflow(on("cluster", f"""
      <sweep id="s"><param name="i"><range from="0" to="{count - 1}"/></param>
        <body><node id="work"><payload type="sh">{body}</payload><output name="who"/><output name="i"/></node>
        </body></sweep>{extra}"""), name="arrays")


def test_a_sweep_of_forty_members_goes_out_as_two_arrays_and_all_succeed_as_the_test_account(
        migrated_url, tmp_path, catalogue, slurm, shims, scratch):  # noqa: F811
    before = sbatch_calls(shims)
    remote = remote_broker(migrated_url, tmp_path, catalogue).start()
    try:
        wf = remote.submit(sweep(40, f'{WHO}; echo "@broker output i=$WB_PARAM_i"'))
        assert remote.wait(wf, deadline=PATIENCE) is WorkflowState.SUCCEEDED, remote.node_states(wf)
        nodes = remote.nodes(wf)
    finally:
        remote.stop()
    members = [nodes[f"s[{i}]/work"] for i in range(40)]
    assert {n.outputs["who"] for n in members} == {slurm.user}
    assert sorted(int(n.outputs["i"]) for n in members) == list(range(40))
    # at most 25 members per array (the host's maxArraySize): two submissions for forty nodes
    arrays = {n.job_id.partition("_")[0] for n in members}
    assert len(arrays) == 2 and sbatch_calls(shims) - before == 2
    assert all("_" in n.job_id for n in members)
    scripts = list(Path(scratch, "slurm").glob("*/*/.arrays/*/job.sh"))
    assert sorted(line for s in scripts for line in s.read_text().splitlines() if "--array" in line) == [
        "#SBATCH --array=0-14%6", "#SBATCH --array=0-24%6"]


def test_a_broker_killed_while_an_array_runs_submits_nothing_twice_and_all_complete(
        migrated_url, tmp_path, catalogue, shims):  # noqa: F811
    """kill -9 of `broker run` while the tasks of an array run; the rerun finds them by the array's name."""
    doc = sweep(12, 'i=0; while [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; '
                    f'{WHO}; echo "@broker output i=$WB_PARAM_i"')
    before = sbatch_calls(shims)
    killed_and_rerun(doc, migrated_url, tmp_path, catalogue, lambda: sbatch_calls(shims) - before >= 1,
                     "the array to be submitted")
    assert sbatch_calls(shims) - before == 1  # one submission for the twelve members, crash or not
