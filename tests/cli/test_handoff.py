"""``broker run`` and ``broker resume`` while another broker holds the database: the workflow is handed to it
(a request row its writer applies) and followed here to its end, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.cli.helpers import DEADLINE, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def _gated(cli, name: str, gate: Path, *, fail: bool = False, marker: Path | None = None) -> Path:
    """A one-node workflow (named ``name``) whose payload waits for ``gate``, then ends (exit 3 if ``fail``)."""
    first = f'echo {name} >> "{marker}"; ' if marker else ""
    then = "; exit 3" if fail else ""
    payload = waits_for(gate, first=first).replace("</payload>", f"{then}</payload>")
    return cli.file(f"{name}.xml", workflow(f'<node id="only">{payload}</node>', name=name))


def _names(cli) -> dict[str, object]:
    return {w.name: w for w in cli.workflows()}


def _finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE * 2)
    return proc.returncode, out, err


def test_two_then_ten_runs_started_at_once_all_finish_each_with_its_own_exit_code(cli):
    for count in (2, 10):
        gate = cli.tmp / f"gate-{count}"
        files = {f"w{count}-{i}": _gated(cli, f"w{count}-{i}", gate, fail=(i == 1)) for i in range(count)}
        procs = {name: cli.start("run", str(path)) for name, path in files.items()}
        # every payload waits for the gate: all workflows stored at once means one broker holds the database
        # and the others handed theirs to it
        wait_for(lambda: set(files) <= set(_names(cli)), what=f"the {count} workflows to be stored",
                 deadline=DEADLINE * 2)
        gate.touch()
        handed = 0
        for name, proc in procs.items():
            code, out, err = _finish(proc)
            handed += "handing the workflow to broker run on" in err
            wf = _names(cli)[name]
            expected = 1 if name.endswith("-1") else 0
            assert code == expected, (name, out, err)
            assert wf.state == ("failed" if expected else "succeeded")
            assert f"workflow {wf.global_id} ({name}): {wf.state}" in out, (name, out, err)
        assert handed == count - 1


def test_detach_returns_once_taken_and_the_holder_waits_for_it_and_resume_follows_it(cli):
    own_gate, other_gate = cli.tmp / "own", cli.tmp / "other"
    holder = cli.start("run", str(_gated(cli, "own", own_gate)))
    wait_for(lambda: "own" in _names(cli), what="the holder's workflow")
    detached = cli("run", str(_gated(cli, "other", other_gate)), "--detach")
    assert detached.returncode == 0, detached.stderr
    gid = _names(cli)["other"].global_id
    assert f"detached: workflow {gid} runs in broker run on" in detached.stdout
    assert "handing the workflow to broker run on" in detached.stderr
    # `broker resume` of a workflow the holder runs: handed over again (a no-op), followed to its end
    resumed = cli.start("resume", gid)
    resuming = resumed.stdout.readline()
    assert resuming.startswith(f"resuming workflow {gid}"), resuming
    own_gate.touch()
    # the holder's own workflow is done; it keeps the database while the detached one runs
    wait_for(lambda: _names(cli)["own"].state == "succeeded", what="the holder's workflow to succeed")
    wait_for(lambda: "waiting for 1 workflow(s) handed to this broker" in holder.stderr.readline(),
             what="the holder to say it waits")
    assert holder.poll() is None
    other_gate.touch()
    code, out, err = _finish(holder)
    assert code == 0, err
    assert _names(cli)["other"].state == "succeeded"
    code, out, err = _finish(resumed)
    assert code == 0, err
    assert f"workflow {gid} (other): succeeded" in out


def test_detach_without_a_running_broker_is_refused(cli):
    done = cli("run", str(_gated(cli, "alone", cli.tmp / "gate")), "--detach")
    assert done.returncode == 3
    assert "--detach hands the workflow to the broker holding the database, and none does" in done.stderr
    assert cli.workflows() == []


def test_ctrl_c_of_a_follower_cancels_its_own_workflow_only(cli):
    gate = cli.tmp / "gate"
    holder = cli.start("run", str(_gated(cli, "holder", gate)))
    wait_for(lambda: "holder" in _names(cli), what="the holder's workflow")
    follower = cli.start("run", str(_gated(cli, "follower", gate)))
    submitted = follower.stdout.readline()  # the workflow is taken: the follower follows it from now on
    assert submitted.startswith("submitted workflow "), submitted
    wait_for(lambda: cli.nodes(_names(cli)["follower"].id)["only"].state == "running",
             what="the follower's node to run")
    follower.send_signal(signal.SIGINT)
    code, out, err = _finish(follower)
    assert code == 130, err
    assert "cancelling... press Ctrl-C again to stop at once" in err
    wf = _names(cli)["follower"]
    assert wf.state == "cancelled" and f"workflow {wf.global_id} (follower): cancelled" in out
    assert _names(cli)["holder"].state == "running"
    gate.touch()
    code, out, err = _finish(holder)
    assert code == 0, err


def test_a_broker_that_would_run_payloads_as_another_account_is_refused_naming_it(cli):
    """A `broker serve`-like broker (root, payloads as mapped accounts) that maps the user to another account."""
    from tests.engine.helpers import Broker

    # a work root whose parents let other accounts through (a root broker that switches accounts checks it)
    root = Path(tempfile.mkdtemp(prefix="handoff-", dir="/tmp"))
    try:
        root.chmod(0o711)
        catalogue = root / "hosts.xml"
        catalogue.write_text('<hosts xmlns="urn:workflow-broker:hosts:1.0"><host name="localhost" launcher="local">'
                             '<account user="*" login="nobody"/></host></hosts>')
        broker = Broker(cli.url, root, run_as_broker_account=False)
        broker.settings = broker.settings.replace("hosts", catalogue=str(catalogue))
        broker.start()
        try:
            done = cli("run", str(_gated(cli, "mine", cli.tmp / "gate")))
        finally:
            broker.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert done.returncode == 3, done.stderr
    assert "broker: cannot hand the workflow over: broker serve on" in done.stderr
    assert "runs user 'tester''s payloads on host 'localhost' as account 'nobody'" in done.stderr
    assert "mine" not in _names(cli)


def test_the_holder_ends_first_and_a_follower_takes_the_database_over(cli, payloads):
    holder_gate, follower_gate = cli.tmp / "holder-gate", cli.tmp / "follower-gate"
    marker = cli.tmp / "marker"
    holder = cli.start("run", str(_gated(cli, "holder", holder_gate)))
    wait_for(lambda: "holder" in _names(cli), what="the holder's workflow")
    follower = cli.start("run", str(_gated(cli, "follower", follower_gate, marker=marker)))
    wait_for(lambda: marker.exists(), what="the follower's payload to start (in the holder)")
    holder.send_signal(signal.SIGTERM)  # stops at once, leaving payloads running
    code, _, err = _finish(holder)
    assert code == 130, err
    wait_for(lambda: "the broker holding the database has stopped: this one takes it over" in follower.stderr.readline(),
             what="the follower to take the database over")
    follower_gate.touch()
    code, out, err = _finish(follower)
    assert code == 0, err
    wf = _names(cli)["follower"]
    assert wf.state == "succeeded" and f"workflow {wf.global_id} (follower): succeeded" in out
    # adopted, not run again
    assert marker.read_text() == "follower\n"
    holder_gate.touch()  # the first holder's payload ends (its workflow waits for `broker resume`)


def test_admin_delete_works_while_a_broker_run_holds_the_database(cli):
    (cli.tmp / "old-gate").touch()
    first = cli("run", str(_gated(cli, "finished", cli.tmp / "old-gate")))
    assert first.returncode == 0, first.stderr
    gate = cli.tmp / "gate"
    holder = cli.start("run", str(_gated(cli, "holder", gate)))
    wait_for(lambda: "holder" in _names(cli) and _names(cli)["holder"].state == "running",
             what="the holder's workflow to run")
    gid = _names(cli)["finished"].global_id
    deleted = cli("admin", "delete", "--id", gid, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted 1 workflow: {gid}" in deleted.stdout
    assert "finished" not in _names(cli)
    assert any(gid in e.message for e in cli.admin_actions())
    gate.touch()
    code, _, err = _finish(holder)
    assert code == 0, err


def test_pending_requests_survive_a_crash_and_are_applied_once(cli):
    """A request inserted while no broker runs is applied by the next one, once; one withdrawn never is."""
    from broker.persistence import requests

    with cli.sessions.begin() as s:
        kept = requests.insert(s, "archive", "admin:tester", {"workflow_id": None, "message": "kept",
                                                               "properties": {}}, account=os.environ.get("USER"))
        gone = requests.insert(s, "archive", "admin:tester", {"workflow_id": None, "message": "withdrawn",
                                                               "properties": {}})
        assert requests.withdraw(s, gone)
    gate = cli.tmp / "gate"
    holder = cli.start("run", str(_gated(cli, "any", gate)))

    def state(request_id: int) -> str:
        with cli.sessions() as s:
            return requests.get(s, request_id).state

    wait_for(lambda: state(kept) == "applied", what="the next broker to apply the pending request")
    gate.touch()
    code, _, err = _finish(holder)
    assert code == 0, err
    done = cli("run", str(_gated(cli, "again", gate)))
    assert done.returncode == 0, done.stderr
    assert [e.message for e in cli.admin_actions()] == ["kept"]
    with cli.sessions() as s:
        assert requests.get(s, kept).state == "applied" and requests.get(s, gone).state == "withdrawn"


def test_a_stored_workflow_with_arguments_is_handed_over_bound_with_its_origin(cli):
    """The arguments travel bound (a file argument as its content: the holder need not read the file)."""
    gate = cli.tmp / "gate"
    holder = cli.start("run", str(_gated(cli, "holder", gate)))
    wait_for(lambda: "holder" in _names(cli), what="the holder's workflow")
    doc = cli.file("args.xml", workflow("""
        <parameters><parameter name="word" type="string" required="true"/>
          <parameter name="input" type="file" required="true"/></parameters>
        <node id="a"><payload type="sh">printf '%s|%s' "$WB_ARG_word" "$WB_ARG_input" > out.txt</payload></node>""",
                                        name="args"))
    assert cli("workflow", "add", str(doc)).returncode == 0
    data = cli.file("data.txt", "line 1\n")
    ran = cli("run", "args@1", "--arg", "word=hello", "--arg", f"input={data}")
    assert ran.returncode == 0, ran.stderr
    assert "handing the workflow to broker run on" in ran.stderr
    wf = _names(cli)["args"]
    assert ran.stdout.splitlines()[0] == f"submitted workflow {wf.global_id} (id {wf.id}): args from stored workflow args@1"
    assert (wf.origin_name, wf.origin_version) == ("args", 1)
    assert (Path(cli.nodes(wf.id)["a"].workdir) / "out.txt").read_text() == "hello|line 1\n"
    gate.touch()
    code, _, err = _finish(holder)
    assert code == 0, err
