"""Resuming: running the same file again, or ``broker resume ID``, after ``broker run`` was killed."""

from __future__ import annotations

import signal
import subprocess

import pytest

from broker.cli import main
from tests.cli.helpers import DEADLINE, alive, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def _waiting_workflow(cli):
    """A file whose first node appends to a marker, and whose second waits for a ``go`` file."""
    marker, go = cli.tmp / "first.marker", cli.tmp / "go"
    path = cli.file("wait.xml", workflow(f"""
        <node id="first"><payload type="sh">echo ran >> "{marker}"</payload></node>
        <node id="wait"><dependsOn node="first"/>{waits_for(go)}</node>"""))
    return path, marker, go


def _kill_once_running(cli, path) -> None:
    """Start ``broker run`` and SIGKILL it once the node ``wait`` runs (its payload keeps running)."""
    proc = cli.start("run", str(path))
    cli.wait_node("wait", "running")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=DEADLINE)
    assert cli.workflows()[0].state == "running"


def test_running_the_same_file_again_resumes_the_unfinished_workflow(sqlite_cli):
    path, marker, go = _waiting_workflow(sqlite_cli)
    _kill_once_running(sqlite_cli, path)
    go.touch()  # the payload may now end while no broker runs: the resumed broker finds its result
    result = sqlite_cli("run", str(path))
    assert result.returncode == 0, result.stderr
    (wf,) = sqlite_cli.workflows()
    assert result.stdout.startswith(f"resuming workflow {wf.global_id} (submitted ")
    assert "): 1 of 2 nodes done\n" in result.stdout.splitlines()[0] + "\n"
    assert "submitted workflow" not in result.stdout
    assert wf.state == "succeeded"
    assert marker.read_text() == "ran\n"


def test_resume_by_id_reattaches_to_the_payload_that_is_still_running(cli):
    path, marker, go = _waiting_workflow(cli)
    _kill_once_running(cli, path)
    pid = int(cli.nodes()["wait"].job_id)
    (wf,) = cli.workflows()
    proc = cli.start("resume", wf.global_id)
    first = proc.stdout.readline()
    assert first.startswith(f"resuming workflow {wf.global_id} (submitted ")
    assert alive(pid)  # the same payload, adopted: not started again
    wait_for(lambda: len(_launch_events(cli, "wait")) == 2, what="the adoption's NODE_LAUNCH event")
    go.touch()
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert f"workflow {wf.global_id} (test): succeeded" in out
    wait = cli.nodes()["wait"]
    assert (wait.state, wait.attempt, wait.job_id) == ("succeeded", 1, str(pid))
    assert _launch_events(cli, "wait") == ["attempt 1 started on localhost", "attempt 1 adopted on localhost"]
    assert marker.read_text() == "ran\n"
    assert len(cli.workflows()) == 1


def test_a_finished_workflow_is_submitted_anew_rather_than_resumed(sqlite_cli):
    hello = sqlite_cli.file("hello.xml", workflow('<node id="a"><payload type="sh">echo</payload></node>'))
    assert sqlite_cli("run", str(hello)).returncode == 0
    second = sqlite_cli("run", str(hello))
    assert second.returncode == 0
    assert second.stdout.startswith("submitted workflow ")
    assert len(sqlite_cli.workflows()) == 2


def test_resume_of_an_ended_workflow_says_so_and_exits_with_its_outcome(sqlite_cli):
    bad = sqlite_cli.file("bad.xml", workflow('<node id="a"><payload type="sh">exit 4</payload></node>'))
    assert sqlite_cli("run", str(bad)).returncode == 1
    (wf,) = sqlite_cli.workflows()
    result = sqlite_cli("resume", str(wf.id))
    assert result.returncode == 1
    assert result.stdout.startswith(f"workflow {wf.global_id} has already ended: failed (`broker restart ")


def test_resume_of_an_unknown_workflow_exits_2(sqlite_cli):
    result = sqlite_cli("resume", "wf-" + "0" * 18)
    assert result.returncode == 2
    assert result.stderr.startswith("broker: no workflow wf-")


def test_waiting_helper_fails_the_payload_when_the_file_never_appears(sqlite_cli):
    # the bound of the waiting payload is what keeps a broken test from leaving a process behind forever
    path = sqlite_cli.file("never.xml", workflow(f'<node id="w">{waits_for(sqlite_cli.tmp / "never", 1)}</node>'))
    result = sqlite_cli("run", str(path))
    assert result.returncode == 1
    wait_for(lambda: sqlite_cli.node_state("w") == "failed", what="the bounded wait to fail")


def test_resume_counts_the_nodes_its_sweeps_will_expand_to_as_validate_and_the_summary_do(sqlite_cli, capsys):
    go = sqlite_cli.tmp / "go"
    path = sqlite_cli.file("sweeps.xml", workflow(f"""
        <node id="wait">{waits_for(go)}</node>
        <sweep id="s"><dependsOn node="wait"/>
          <param name="n"><range from="1" to="10"/></param>
          <body><node id="a"><payload type="sh">echo a</payload></node>
                <node id="b"><dependsOn node="a"/><payload type="sh">echo b</payload></node></body>
        </sweep>
        <node id="last"><dependsOn node="s"/><payload type="sh">echo last</payload></node>"""))
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: valid (4 node definitions, 1 sweep: 22 nodes to run)\n"
    _kill_once_running(sqlite_cli, path)
    (wf,) = sqlite_cli.workflows()
    proc = sqlite_cli.start("resume", wf.global_id)
    assert proc.stdout.readline().endswith("): 0 of 22 nodes done\n")
    go.touch()
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert "  total      22 nodes, 22 done\n" in out


@pytest.mark.parametrize("command", ["resume", "run"])
def test_resuming_without_workdir_puts_new_attempts_under_the_root_the_workflow_was_submitted_with(sqlite_cli,
                                                                                                   command):
    go = sqlite_cli.tmp / "go"
    path = sqlite_cli.file("later.xml", workflow(f"""
        <node id="wait">{waits_for(go)}</node>
        <node id="later"><dependsOn node="wait"/><payload type="sh">echo later</payload></node>"""))
    _kill_once_running(sqlite_cli, path)
    (wf,) = sqlite_cli.workflows()
    assert wf.work_root == str(sqlite_cli.workdir)
    elsewhere = sqlite_cli.tmp / "elsewhere"
    # `broker resume ID`, or `broker run` of the same file, which resumes it too
    target = wf.global_id if command == "resume" else str(path)
    args = [a for a in sqlite_cli.args(command, target) if a not in ("--workdir", str(sqlite_cli.workdir))]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=sqlite_cli.tmp,
                            env={**sqlite_cli.env, "BROKER_ENGINE_WORKDIR": str(elsewhere)})
    try:
        assert proc.stdout.readline().startswith(f"resuming workflow {wf.global_id}")
        go.touch()
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    later = sqlite_cli.nodes()["later"]
    assert later.state == "succeeded"
    assert later.workdir.startswith(f"{sqlite_cli.workdir}/{wf.global_id}/"), later.workdir
    assert not (elsewhere / wf.global_id).exists()


def _launch_events(cli, path: str) -> list[str]:
    from sqlalchemy import select

    from broker.persistence.models import Event

    with cli.sessions() as s:
        return list(s.scalars(select(Event.message).where(Event.type == "NODE_LAUNCH", Event.node_path == path)
                              .order_by(Event.id)))


def test_a_payload_that_ended_while_no_broker_ran_gets_its_job_id_work_directory_and_start_time(sqlite_cli):
    path = sqlite_cli.file("quick.xml", workflow('<node id="quick"><payload type="sh">echo quick</payload></node>'))
    # the broker dies once the payload has started, before its start (queued -> running) is committed
    crashed = sqlite_cli("run", str(path), env={"BROKER_TEST_CRASH": "launched:1"})
    assert crashed.returncode == -9, crashed.stderr
    node = sqlite_cli.nodes()["quick"]
    assert (node.state, node.job_id, node.workdir, node.started_at) == ("queued", None, None, None)
    attempt = sqlite_cli.workdir / sqlite_cli.workflows()[0].global_id / "quick" / "1"
    wait_for(lambda: (attempt / "exit").exists(), what="the payload to end")
    result = sqlite_cli("resume", "1")
    assert result.returncode == 0, result.stderr
    node = sqlite_cli.nodes()["quick"]
    assert node.state == "succeeded"
    assert node.workdir == str(attempt)
    assert node.job_id is not None and int(node.job_id) > 0
    assert node.started_at is not None and node.started_at <= node.finished_at
    assert _launch_events(sqlite_cli, "quick") == []  # no start was seen: none is announced
