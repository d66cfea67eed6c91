"""What ``broker run``'s summary and ``broker status ID`` say about nodes that did not succeed: every one of
them (cancelled too), each message whole (wrapped, never cut), and skip and expansion messages that read right."""

from __future__ import annotations

import pytest

from broker.cli import main
from tests.cli.helpers import DEADLINE, waits_for, workflow

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes

#: a file name long enough that the message naming it is wider than the terminal (COLUMNS=200 in the tests)
MISSING = "a_file_that_is_not_there_" * 8 + ".txt"


def _unwrapped(lines: list[str], first: int, column: int) -> str:
    """The last column of row ``first`` with its continuation lines (those blank up to ``column``) joined."""
    parts = [lines[first][column:]]
    for line in lines[first + 1:]:
        if line[:column].strip():
            break
        parts.append(line[column:])
    return " ".join(parts)


def _failing(cli):
    return cli.file("failing.xml", workflow(f"""
        <node id="fetch"><payload type="sh">echo never</payload>
          <stageIn source="file://{cli.tmp}/{MISSING}" target="x"/></node>
        <sweep id="trials">
          <param name="n"><range from="1" to="10"/></param>
          <body><node id="trial"><payload type="sh">test "$WB_PARAM_n" -gt 3</payload></node></body>
        </sweep>
        <node id="summary"><dependsOn node="trials"/><requires tolerance="0.8"/>
          <payload type="sh">echo enough</payload></node>
        <sweep id="single">
          <param name="k"><value>only</value></param>
          <body><node id="one"><payload type="sh">echo one</payload></node></body>
        </sweep>"""))


def test_the_summary_and_status_show_skip_messages_whole_with_the_tolerance_numbers(sqlite_cli, capsys):
    result = sqlite_cli("run", str(_failing(sqlite_cli)), env={"BROKER_STAGING_ROOTS": str(sqlite_cli.tmp)})
    assert result.returncode == 1, result.stderr
    nodes = sqlite_cli.nodes()
    missing = f"stage-in failed: no such file to stage: {sqlite_cli.tmp}/{MISSING}"
    assert nodes["fetch"].message == missing
    assert nodes["summary"].message == "7 of 10 parent units succeeded, 80% needed"
    lines = result.stdout.split("nodes that did not succeed:\n", 1)[1].splitlines()
    column = lines[0].index("MESSAGE")
    rows = {line.split()[0]: i for i, line in enumerate(lines) if line[:column].strip()}
    assert _unwrapped(lines, rows["fetch"], column).replace(" ", "") == missing.replace(" ", "")
    assert _unwrapped(lines, rows["summary"], column) == "7 of 10 parent units succeeded, 80% needed"
    assert "..." not in result.stdout
    assert max(len(line) for line in lines) <= 200

    (wf,) = sqlite_cli.workflows()
    assert main(["status", wf.global_id, "--db", sqlite_cli.url]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n", 1)[1].splitlines()
    column = table[0].index("MESSAGE")
    rows = {line.split()[0]: i for i, line in enumerate(table) if line[:column].strip()}
    assert _unwrapped(table, rows["fetch"], column).replace(" ", "") == missing.replace(" ", "")
    assert _unwrapped(table, rows["summary"], column) == "7 of 10 parent units succeeded, 80% needed"
    assert "..." not in out

    assert main(["events", f"{wf.global_id}/single", "--db", sqlite_cli.url]) == 0
    assert "expanded into 1 member\n" in capsys.readouterr().out


def test_the_summary_lists_cancelled_nodes_with_the_failed_and_skipped_ones(sqlite_cli, payloads):
    pidfile, go = sqlite_cli.tmp / "long.pid", sqlite_cli.tmp / "go"
    path = sqlite_cli.file("cancel.xml", workflow(f"""
        <node id="long">{waits_for(go, first=f'echo $$ > "{pidfile}"; ')}</node>
        <node id="after"><dependsOn node="long"/><payload type="sh">echo after</payload></node>"""))
    run = sqlite_cli.start("run", str(path))
    sqlite_cli.wait_node("long", "running")
    (wf,) = sqlite_cli.workflows()
    assert sqlite_cli("cancel", f"{wf.global_id}/long").returncode == 0
    out, err = run.communicate(timeout=DEADLINE)
    assert run.returncode == 1, err
    table = out.split("nodes that did not succeed:\n", 1)[1].splitlines()
    assert [row.split()[:2] for row in table[1:]] == [["long", "cancelled"], ["after", "skipped"]]
