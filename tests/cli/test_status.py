"""``broker status``: every workflow, one workflow, one node; tables and JSON."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from broker.cli import main
from tests.cli.helpers import EXAMPLES, OWNER, waits_for, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def status(cli, capsys, *args: str) -> tuple[int, str, str]:
    """``broker status`` in this process: (exit code, stdout, stderr)."""
    code = main(["status", *args, "--db", cli.url])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_lists_workflows_newest_first(cli, capsys):
    assert cli("run", str(EXAMPLES / "hello.xml")).returncode == 0
    assert cli("run", str(EXAMPLES / "failing.xml")).returncode == 1
    hello, failing = cli.workflows()
    code, out, _ = status(cli, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "GLOBAL", "ID", "NAME", "OWNER", "STATE", "DONE", "SUBMITTED", "FINISHED"]
    assert lines[1].split()[:6] == [str(failing.id), failing.global_id, "failing", OWNER, "failed", "5/5"]
    assert lines[2].split()[:6] == [str(hello.id), hello.global_id, "hello", OWNER, "succeeded", "1/1"]
    assert len(lines) == 3

    code, out, _ = status(cli, capsys, "--limit", "1")
    assert [line.split()[0] for line in out.splitlines()[1:2]] == [str(failing.id)]
    assert out.splitlines()[-1] == "(the newest 1; --all lists every workflow)"
    code, out, _ = status(cli, capsys, "--limit", "1", "--all")
    assert len(out.splitlines()) == 3


def test_status_of_a_workflow_shows_its_counts_and_its_nodes(cli, capsys):
    assert cli("run", str(EXAMPLES / "failing.xml")).returncode == 1
    (wf,) = cli.workflows()
    for key in (wf.global_id, str(wf.id)):
        code, out, _ = status(cli, capsys, key)
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["workflow", wf.global_id, "(id", f"{wf.id})"]
        assert "state      failed" in lines
        assert "nodes      5/5 done: succeeded 2, failed 1, skipped 2" in lines
        table = lines[lines.index("") + 1:]
        assert table[0].split() == ["NODE", "KIND", "STATE", "ATTEMPT", "EXIT", "HOST", "MESSAGE"]
        assert table[2].split() == ["broken", "node", "failed", "1", "3", "localhost", "exit", "code", "3"]
        assert [row.split()[0] for row in table[1:]] == ["prepare", "broken", "analyse", "publish", "independent"]


def test_a_large_workflow_shows_the_nodes_that_need_attention_first(sqlite_cli, capsys):
    nodes = "\n".join(f'<node id="n{i}"><payload type="sh">exit {1 if i == 6 else 0}</payload></node>'
                      for i in range(8))
    sqlite_cli("run", str(sqlite_cli.file("many.xml", workflow(nodes))))
    code, out, _ = status(sqlite_cli, capsys, "1", "--nodes", "3")
    table = out.split("\n\n", 1)[1].splitlines()
    assert [row.split()[:3] for row in table[1:4]] == [["n0", "node", "succeeded"], ["n1", "node", "succeeded"],
                                                       ["n6", "node", "failed"]]
    assert table[4] == "... 5 more nodes (--nodes all shows every node)"
    code, out, _ = status(sqlite_cli, capsys, "1", "--nodes", "all")
    assert "more nodes" not in out
    assert len(out.split("\n\n", 1)[1].splitlines()) == 9


def test_status_of_a_node_shows_its_outputs_and_work_directory(cli, capsys):
    assert cli("run", str(EXAMPLES / "diamond.xml")).returncode == 0
    (wf,) = cli.workflows()
    code, out, _ = status(cli, capsys, f"{wf.global_id}/split")
    assert code == 0
    fields = dict(line.split(None, 1) if " " in line.strip() else (line, "") for line in out.splitlines()
                  if not line.startswith(("outputs:", " ")))
    assert fields["node"].strip() == f"{wf.global_id}/split"
    assert fields["state"].strip() == "succeeded"
    workdir = out.split("work dir", 1)[1].splitlines()[0].strip()
    assert os.path.isfile(os.path.join(workdir, "stdout"))
    assert "\noutputs:\n  parts = 2\n\n" in out
    assert "progress    100%" in out or "progress    50%" in out


def test_status_of_a_node_lists_every_attempt_with_its_outcome(cli, capsys, tmp_path):
    doc = cli.file("retry.xml", workflow(
        '<node id="flaky"><execution><retry count="2" backoff="10ms"/></execution>'
        '<payload type="sh">echo "attempt $WB_ATTEMPT"; test "$WB_ATTEMPT" -ge 3 || exit 7</payload></node>'))
    assert cli("run", str(doc)).returncode == 0
    (wf,) = cli.workflows()
    code, out, _ = status(cli, capsys, f"{wf.global_id}/flaky")
    assert code == 0
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split() == ["ATTEMPT", "OUTCOME", "HOST", "JOB", "EXIT", "STARTED", "FINISHED", "WORKDIR",
                                "MESSAGE"]
    rows = [line.split() for line in table[1:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("1", "failed", "localhost", "7"),
                                                        ("2", "failed", "localhost", "7"),
                                                        ("3", "succeeded", "localhost", "0")]
    assert [r[-3:] for r in rows[:2]] == [["exit", "code", "7"]] * 2
    for number, row in enumerate(rows, 1):
        workdir = next(cell for cell in row if cell.startswith("/"))
        assert workdir.endswith(f"/flaky/{number}")
        assert (Path(workdir) / "stdout").read_text() == f"attempt {number}\n"
    _, out, _ = status(cli, capsys, f"{wf.global_id}/flaky", "--json")
    attempts = json.loads(out)["attempts"]
    assert [(a["number"], a["outcome"], a["exit_code"]) for a in attempts] == [(1, "failed", 7), (2, "failed", 7),
                                                                               (3, "succeeded", 0)]


def test_a_running_workflow_and_node_show_their_estimated_end_from_earlier_runs(sqlite_cli, capsys, tmp_path):
    cli = sqlite_cli
    quick = cli.file("quick.xml", workflow('<node id="step"><payload type="sh">sleep 0.3</payload></node>', "est"))
    for _ in range(2):
        assert cli("run", str(quick)).returncode == 0
    gate = tmp_path / "gate"
    held = cli.file("held.xml", workflow(f'<node id="step">{waits_for(gate)}</node>', "est"))
    run = cli.start("run", str(held))
    try:
        wait_for(lambda: len(cli.workflows()) == 3 and cli.nodes(cli.workflows()[-1].id)["step"].state == "running",
                 what="the third run's node to run")
        wf = cli.workflows()[-1]
        estimated = re.compile(r"estimated end +\d{4}-\d\d-\d\d [\d:]+ to \S+ \(most likely \S+; "
                               r"from 2 earlier attempts\)")
        for target in (wf.global_id, f"{wf.global_id}/step"):
            code, out, _ = status(cli, capsys, target)
            assert code == 0 and estimated.search(out), out
        _, out, _ = status(cli, capsys, wf.global_id, "--json")
        end = json.loads(out)["estimated_end"]
        assert end["p10"] <= end["p50"] <= end["p90"] and end["basis"] == 2
    finally:
        gate.touch()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    # the progress line's ETA comes with its interval, from the two earlier runs
    assert re.search(r"ETA \d+:\d\d \(\d+:\d\d-\d+:\d\d\)", err), err
    _, out, _ = status(cli, capsys, wf.global_id)
    assert "estimated end" not in out  # ended


def test_status_json_is_machine_readable(cli, capsys):
    assert cli("run", str(EXAMPLES / "diamond.xml")).returncode == 0
    (wf,) = cli.workflows()
    _, out, _ = status(cli, capsys, "--json")
    (row,) = json.loads(out)
    assert (row["global_id"], row["state"], row["done"], row["total"], row["owner"]) == (
        wf.global_id, "succeeded", 4, 4, OWNER)
    _, out, _ = status(cli, capsys, wf.global_id, "--json")
    doc = json.loads(out)
    assert doc["counts"] == {"succeeded": 4}
    assert [n["path"] for n in doc["nodes"]] == ["split", "left", "right", "join"]
    _, out, _ = status(cli, capsys, f"{wf.global_id}/split", "--json")
    node = json.loads(out)
    assert node["outputs"] == {"parts": 2}
    assert node["exit_code"] == 0


def test_status_shows_the_members_of_an_expanded_sweep(sqlite_cli, capsys):
    assert sqlite_cli("run", str(EXAMPLES / "nested-sweep.xml")).returncode == 0
    code, out, _ = status(sqlite_cli, capsys, "1", "--nodes", "all")
    paths = [row.split()[0] for row in out.split("\n\n", 1)[1].splitlines()[1:]]
    assert "grid[1]/seeds[2]/run" in paths
    assert "nodes      9/9 done: succeeded 9" in out.splitlines()
    (wf,) = sqlite_cli.workflows()
    code, out, _ = status(sqlite_cli, capsys, f"{wf.global_id}/grid[1]/seeds[2]/run")
    assert code == 0
    assert "parameters  size=large, seed=3" in out


def test_status_before_anything_ran_says_there_are_no_workflows(fresh_cli, capsys):
    code, out, _ = status(fresh_cli, capsys)
    assert (code, out) == (0, "no workflows\n")
    assert not (fresh_cli.tmp / "db").exists()


def test_status_of_an_unknown_id_is_one_line_and_exit_2(sqlite_cli, capsys):
    code, out, err = status(sqlite_cli, capsys, "wf-" + "0" * 18)
    assert (code, out, err) == (2, "", f"broker: no workflow wf-{'0' * 18}\n")
    code, out, err = status(sqlite_cli, capsys, "7")
    assert (code, err) == (2, "broker: no workflow with id 7\n")


def test_counts_stay_right_when_more_workflows_are_listed_than_one_query_may_name(sqlite_cli, capsys,
                                                                                   monkeypatch):
    import broker.cli.common

    assert sqlite_cli("run", str(EXAMPLES / "hello.xml")).returncode == 0
    assert sqlite_cli("run", str(EXAMPLES / "failing.xml")).returncode == 1
    monkeypatch.setattr(broker.cli.common, "MAX_IN_LIST", 1)  # two workflows: counted without an IN list
    code, out, _ = status(sqlite_cli, capsys, "--all")
    assert [line.split()[5] for line in out.splitlines()[1:]] == ["5/5", "1/1"]
