"""``broker cancel`` and ``broker restart``: through a running broker, and directly when none runs."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.cli.helpers import DEADLINE, OWNER, alive, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def _long(cli):
    """A node that waits (bounded) for a file and records its pid, and a dependant."""
    pidfile, go = cli.tmp / "long.pid", cli.tmp / "go"
    path = cli.file("long.xml", workflow(f"""
        <node id="long">{waits_for(go, first=f'echo $$ > "{pidfile}"; ')}</node>
        <node id="after"><dependsOn node="long"/><payload type="sh">echo after</payload></node>"""))
    return path, pidfile, go


def _pid(cli, pidfile) -> int:
    cli.wait_node("long", "running")
    return wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() and int(pidfile.read_text()),
                    what="the payload's pid")


def test_cancel_reaches_a_running_broker_which_ends_the_run_cancelled(cli, payloads):
    path, pidfile, _ = _long(cli)
    run = cli.start("run", str(path))
    pid = _pid(cli, pidfile)
    payloads.append(pid)
    (wf,) = cli.workflows()
    result = cli("cancel", wf.global_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cancelled workflow {wf.global_id} (1 node was running)\n"
    out, err = run.communicate(timeout=DEADLINE)
    assert run.returncode == 1, err
    assert f"workflow {wf.global_id} (test): cancelled" in out
    assert cli.workflows()[0].state == "cancelled"
    wait_for(lambda: not alive(pid), what="the payload to be killed")
    (action,) = cli.admin_actions()
    assert (action.actor, action.message) == (f"owner:{OWNER}", f"cancel of {wf.global_id} by owner {OWNER}")
    assert action.properties == {"operation": "cancel", "targets": [wf.global_id], "by": OWNER, "role": "owner"}


def test_cancel_without_a_broker_reaches_a_run_kept_in_another_work_directory(sqlite_cli, payloads):
    path, pidfile, _ = _long(sqlite_cli)
    configured, sqlite_cli.workdir = sqlite_cli.workdir, sqlite_cli.tmp / "elsewhere"  # `broker run --workdir`
    run = sqlite_cli.start("run", str(path))
    sqlite_cli.workdir = configured
    pid = _pid(sqlite_cli, pidfile)
    payloads.append(pid)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=DEADLINE)
    # its agent is where that run kept it, under its work directory, not under the configured one
    result = sqlite_cli("cancel", sqlite_cli.workflows()[0].global_id)
    assert result.returncode == 0, result.stderr
    assert not alive(pid)
    node = sqlite_cli.nodes()["long"]
    assert node.state == "cancelled" and f"(its payload (process group {node.job_id}) was killed)" in node.message
    assert not (configured / ".agents").exists()


def test_cancel_without_a_broker_kills_the_payload_and_marks_the_node_cancelled(sqlite_cli, payloads):
    path, pidfile, _ = _long(sqlite_cli)
    run = sqlite_cli.start("run", str(path))
    pid = _pid(sqlite_cli, pidfile)
    payloads.append(pid)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=DEADLINE)
    assert alive(pid)
    (wf,) = sqlite_cli.workflows()
    result = sqlite_cli("cancel", str(wf.id), env={"BROKER_ENGINE_USER": "carol"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cancelled workflow {wf.global_id} (1 node was running)\n"
    assert not alive(pid)
    nodes = sqlite_cli.nodes()
    assert (nodes["long"].state, nodes["after"].state) == ("cancelled", "cancelled")
    assert f"(its payload (process group {nodes['long'].job_id}) was killed)" in nodes["long"].message
    assert sqlite_cli.workflows()[0].state == "cancelled"
    # someone else with the database acts as an operator: recorded as an admin
    assert [(a.actor, a.message, a.properties["role"]) for a in sqlite_cli.admin_actions()] == [
        ("admin:carol", f"cancel of {wf.global_id} by admin carol", "admin")]


def test_cancel_without_a_broker_keeps_the_result_of_a_payload_that_ended_before_it(sqlite_cli, payloads):
    path, pidfile, go = _long(sqlite_cli)
    run = sqlite_cli.start("run", str(path))
    payloads.append(_pid(sqlite_cli, pidfile))
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=DEADLINE)
    go.touch()  # the payload ends by itself while no broker runs: its verdict is its exit status
    (wf,) = sqlite_cli.workflows()
    workdir = sqlite_cli.nodes()["long"].workdir
    wait_for(lambda: (Path(workdir) / "exit").exists(), what="the payload to end")
    result = sqlite_cli("cancel", wf.global_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("node long: its payload ended by itself before the kill (exit code 0); "
                                    f"`broker resume {wf.global_id}` takes its result\n")
    assert sqlite_cli.nodes()["long"].state == "running"  # not cancelled: its result is still to be taken
    resumed = sqlite_cli("resume", wf.global_id)
    nodes = sqlite_cli.nodes()
    assert (nodes["long"].state, nodes["long"].attempt, nodes["after"].state) == ("succeeded", 1, "cancelled"), \
        resumed.stdout + resumed.stderr
    assert sqlite_cli.workflows()[0].state == "cancelled"


def _flaky(cli):
    """``ok`` appends to a marker; ``flaky`` (after it) fails until a ``fixed`` file exists; ``last`` follows."""
    ok, flaky, fixed = cli.tmp / "ok.marker", cli.tmp / "flaky.marker", cli.tmp / "fixed"
    path = cli.file("flaky.xml", workflow(f"""
        <node id="ok"><payload type="sh">echo ran >> "{ok}"</payload></node>
        <node id="flaky"><dependsOn node="ok"/>
          <payload type="sh">echo ran >> "{flaky}"; test -e "{fixed}"</payload>
        </node>
        <node id="last"><dependsOn node="flaky"/><payload type="sh">echo last</payload></node>"""))
    return path, ok, flaky, fixed


def test_restart_without_a_broker_then_resume_runs_only_what_failed(sqlite_cli):
    path, ok, flaky, fixed = _flaky(sqlite_cli)
    assert sqlite_cli("run", str(path)).returncode == 1
    (wf,) = sqlite_cli.workflows()
    fixed.touch()
    result = sqlite_cli("restart", wf.global_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"restarted workflow {wf.global_id}: 2 nodes will run again; "
                             f"run `broker resume {wf.global_id}` to run them\n")
    assert {p: n.state for p, n in sqlite_cli.nodes().items()} == {"ok": "succeeded", "flaky": "ready",
                                                                  "last": "waiting"}
    resumed = sqlite_cli("resume", wf.global_id)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith(f"resuming workflow {wf.global_id} (submitted ")
    assert ok.read_text() == "ran\n"
    assert flaky.read_text() == "ran\nran\n"
    assert sqlite_cli.workflows()[0].state == "succeeded"
    (action,) = sqlite_cli.admin_actions()
    assert (action.actor, action.properties) == (f"owner:{OWNER}", {
        "operation": "restart", "targets": [wf.global_id], "by": OWNER, "role": "owner", "nodes": 2})


def test_restart_of_one_node_reaches_a_running_broker(cli):
    fixed, go = cli.tmp / "fixed", cli.tmp / "go"
    path = cli.file("two.xml", workflow(f"""
        <node id="flaky"><payload type="sh">test -e "{fixed}"</payload></node>
        <node id="long">{waits_for(go)}</node>"""))
    run = cli.start("run", str(path))
    cli.wait_node("flaky", "failed")
    cli.wait_node("long", "running")
    fixed.touch()
    (wf,) = cli.workflows()
    result = cli("restart", f"{wf.global_id}/flaky")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"restarted node {wf.global_id}/flaky and the dependants it held back "
                             "(the running broker runs them)\n")
    cli.wait_node("flaky", "succeeded")
    go.touch()
    out, err = run.communicate(timeout=DEADLINE)
    assert run.returncode == 0, err
    assert cli.nodes()["flaky"].attempt == 2
    (action,) = cli.admin_actions()
    assert (action.actor, action.message, action.node_path) == (
        f"owner:{OWNER}", f"restart of {wf.global_id}/flaky by owner {OWNER}", "flaky")


def test_a_running_broker_that_does_not_apply_a_command_in_time_is_exit_3(sqlite_cli):
    from broker.persistence.lock import BrokerLock

    path, *_ = _flaky(sqlite_cli)
    sqlite_cli("run", str(path))
    (wf,) = sqlite_cli.workflows()
    with BrokerLock(sqlite_cli.url):  # "a broker" that never reads the control table
        result = sqlite_cli("restart", wf.global_id, "--wait", "0.3")
    assert result.returncode == 3
    assert result.stderr.startswith(f"broker: the running broker has not applied the restart of workflow "
                                    f"{wf.global_id} within 0.3 s (control request 1 stays queued")


def test_commands_that_would_change_nothing_say_so_and_exit_0(sqlite_cli):
    hello = sqlite_cli.file("hello.xml", workflow('<node id="a"><payload type="sh">echo</payload></node>'))
    sqlite_cli("run", str(hello))
    (wf,) = sqlite_cli.workflows()
    cancel = sqlite_cli("cancel", wf.global_id)
    assert (cancel.returncode, cancel.stdout) == (0, f"workflow {wf.global_id} has already ended (succeeded): "
                                                     "nothing to cancel\n")
    restart = sqlite_cli("restart", f"{wf.global_id}/a")
    assert (restart.returncode, restart.stdout) == (0, f"node {wf.global_id}/a has no failed, cancelled or "
                                                       "skipped nodes: nothing to restart\n")


def test_unknown_ids_exit_2_with_one_line(sqlite_cli):
    hello = sqlite_cli.file("hello.xml", workflow('<node id="a"><payload type="sh">echo</payload></node>'))
    sqlite_cli("run", str(hello))
    (wf,) = sqlite_cli.workflows()
    for command in ("cancel", "restart"):
        for target, message in ((f"{wf.global_id}/nope", f"broker: no node {wf.global_id}/nope "),
                                ("99", "broker: no workflow with id 99\n"),
                                ("junk", "broker: 'junk' is neither a workflow id")):
            result = sqlite_cli(command, target)
            assert result.returncode == 2, (command, target, result.stderr)
            assert result.stderr.startswith(message)
            assert len(result.stderr.splitlines()) == 1
