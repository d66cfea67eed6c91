"""Ctrl-C during ``broker run``: the first cancels cleanly, a second stops at once."""

from __future__ import annotations

import signal

import pytest

from tests.cli.helpers import DEADLINE, alive, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def _long_workflow(cli, *, ignore_term: bool = False):
    """A long node that records its pid (bounded: a minute at most), and a dependant."""
    pidfile = cli.tmp / "long.pid"
    trap = "trap '' TERM; " if ignore_term else ""
    path = cli.file("long.xml", workflow(f"""
        <node id="long">{waits_for(cli.tmp / "never", first=f'{trap}echo $$ > "{pidfile}"; ')}</node>
        <node id="after"><dependsOn node="long"/><payload type="sh">echo after</payload></node>"""))
    return path, pidfile


def _payload_pid(cli, pidfile) -> int:
    cli.wait_node("long", "running")
    return wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() and int(pidfile.read_text()),
                    what="the payload to record its pid")


def test_ctrl_c_cancels_the_workflow_kills_the_payload_and_exits_130(sqlite_cli, payloads):
    path, pidfile = _long_workflow(sqlite_cli)
    proc = sqlite_cli.start("run", str(path))
    pid = _payload_pid(sqlite_cli, pidfile)
    payloads.append(pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert "cancelling... press Ctrl-C again to stop at once" in err
    (wf,) = sqlite_cli.workflows()
    assert wf.state == "cancelled"
    assert f"workflow {wf.global_id} (test): cancelled" in out
    assert {p: n.state for p, n in sqlite_cli.nodes().items()} == {"long": "cancelled", "after": "cancelled"}
    wait_for(lambda: not alive(pid), what="the payload to be gone")


def test_a_second_ctrl_c_stops_at_once_and_leaves_the_payload_for_a_later_broker(sqlite_cli, payloads):
    # the payload ignores SIGTERM, so the cancel waits out the kill grace: time for the second Ctrl-C
    path, pidfile = _long_workflow(sqlite_cli, ignore_term=True)
    proc = sqlite_cli.start("run", str(path))
    pid = _payload_pid(sqlite_cli, pidfile)
    payloads.append(pid)
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "cancelling..." in proc.stderr.readline(), what="the first Ctrl-C to be acknowledged")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    (wf,) = sqlite_cli.workflows()
    assert f"stopping now; payloads still running keep running: `broker resume {wf.global_id}`" in err
    assert "workflow " + wf.global_id + " (test): " not in out  # no summary: it did not end
    assert wf.state == "running"
    assert alive(pid)
    # with no broker left, `broker cancel` kills it itself (SIGTERM is ignored: SIGKILL after the grace)
    result = sqlite_cli("cancel", wf.global_id)
    assert result.returncode == 0, result.stderr
    assert not alive(pid)
    assert sqlite_cli.workflows()[0].state == "cancelled"


def test_sigterm_stops_at_once_like_a_second_ctrl_c(sqlite_cli, payloads):
    path, pidfile = _long_workflow(sqlite_cli)
    proc = sqlite_cli.start("run", str(path))
    pid = _payload_pid(sqlite_cli, pidfile)
    payloads.append(pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert "stopping now" in err
    assert alive(pid)
    assert sqlite_cli.workflows()[0].state == "running"


def _following(proc) -> None:
    """Wait until ``broker run`` follows its workflow (its first progress line: its signal handlers are set)."""
    while not proc.stderr.readline().startswith("["):
        assert proc.poll() is None, "broker run ended before following its workflow"


def _stopped_cleanly(proc) -> str:
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ActorDeadError" not in err, err
    return err


def test_stopping_during_a_large_sweep_expansion_prints_no_traceback(sqlite_cli):
    # a few members at once, as with the old broker-wide limit: the test is about stopping during the
    # expansion, not about starting (and then killing) the local host's 512 payloads of the shipped sizing
    sqlite_cli.env["BROKER_ENGINE_MAX_IN_FLIGHT"] = "8"
    gate = sqlite_cli.tmp / "go"
    path = sqlite_cli.file("big.xml", workflow(f"""
        <node id="first"><payload type="sh">true</payload></node>
        <sweep id="big"><dependsOn node="first"/>
          <param name="n"><range from="1" to="20000"/></param>
          <body><node id="m">{waits_for(gate)}</node></body>
        </sweep>"""))
    try:
        for stop in (signal.SIGTERM, signal.SIGINT):
            proc = sqlite_cli.start("run", str(path))
            _following(proc)
            wait_for(lambda: sqlite_cli.node_state("big") in ("ready", "running"), what="the sweep to expand")
            proc.send_signal(stop)
            if stop is signal.SIGINT:
                proc.send_signal(stop)  # the second Ctrl-C: stop at once
            _stopped_cleanly(proc)
    finally:
        gate.touch()


def test_stopping_while_many_attempts_are_polled_prints_no_traceback(sqlite_cli):
    gate = sqlite_cli.tmp / "go"
    path = sqlite_cli.file("many.xml", workflow(f"""
        <sweep id="many">
          <param name="n"><range from="1" to="40"/></param>
          <body><node id="m">{waits_for(gate)}</node></body>
        </sweep>"""))
    try:
        proc = sqlite_cli.start("run", str(path))
        _following(proc)
        wait_for(lambda: sum(n.state == "running" for n in sqlite_cli.nodes().values()) >= 10,
                 what="attempts to run")
        proc.send_signal(signal.SIGTERM)
        _stopped_cleanly(proc)
    finally:
        gate.touch()
