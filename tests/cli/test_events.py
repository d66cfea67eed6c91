"""``broker events``: one event per line, paging with --after/--limit, and --follow to the workflow's end."""

from __future__ import annotations

import pytest

from broker.cli import main
from tests.cli.helpers import DEADLINE, EXAMPLES, waits_for, workflow

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def events(cli, capsys, *args: str) -> tuple[int, list[list[str]], str]:
    """``broker events`` in this process: (exit code, lines split into their first 7 fields + message, stderr)."""
    code = main(["events", *args, "--db", cli.url])
    out, err = capsys.readouterr()
    return code, [line.split(" ", 7) for line in out.splitlines()], err


def test_events_are_printed_one_per_line_oldest_first(sqlite_cli, capsys):
    assert sqlite_cli("run", str(EXAMPLES / "diamond.xml")).returncode == 0
    (wf,) = sqlite_cli.workflows()
    code, lines, _ = events(sqlite_cli, capsys, wf.global_id)
    assert code == 0
    ids = [int(line[0]) for line in lines]
    assert ids == sorted(ids)
    assert [int(line[2]) for line in lines] == list(range(1, len(lines) + 1))  # per-workflow sequence
    first, last = lines[0], lines[-1]
    assert first[3:6] == ["INFO", "WORKFLOW_SUBMITTED", "-"]
    assert last[3:7] == ["INFO", "WORKFLOW_STATE", "-", "succeeded"]
    assert ["STATUS", "NODE_STATE", "join", "succeeded"] in [line[3:7] for line in lines]
    assert ["PROGRESS", "NODE_PROGRESS", "split", "-", "half way"] in [line[3:8] for line in lines]
    assert all(len(line) == 8 and "T" in line[1] for line in lines)


def test_after_and_limit_page_through_the_events(sqlite_cli, capsys):
    assert sqlite_cli("run", str(EXAMPLES / "hello.xml")).returncode == 0
    _, every, _ = events(sqlite_cli, capsys, "1")
    _, page, _ = events(sqlite_cli, capsys, "1", "--limit", "2")
    assert page == every[:2]
    _, rest, _ = events(sqlite_cli, capsys, "1", "--after", page[-1][0])
    assert rest == every[2:]


def test_a_node_id_shows_only_that_nodes_events(sqlite_cli, capsys):
    assert sqlite_cli("run", str(EXAMPLES / "diamond.xml")).returncode == 0
    (wf,) = sqlite_cli.workflows()
    _, lines, _ = events(sqlite_cli, capsys, f"{wf.global_id}/left")
    assert {line[5] for line in lines} == {"left"}
    assert [line[6] for line in lines if line[4] == "NODE_STATE"] == ["ready", "queued", "running", "succeeded"]


def test_follow_prints_new_events_and_ends_with_the_workflow(sqlite_cli):
    go = sqlite_cli.tmp / "go"
    path = sqlite_cli.file("wait.xml", workflow(f'<node id="w">{waits_for(go)}</node>'))
    run = sqlite_cli.start("run", str(path))
    sqlite_cli.wait_node("w", "running")
    (wf,) = sqlite_cli.workflows()
    follower = sqlite_cli.start("events", wf.global_id, "--follow")
    first = follower.stdout.readline().split()
    assert first[4] == "WORKFLOW_SUBMITTED"
    go.touch()
    out, err = follower.communicate(timeout=DEADLINE)
    assert follower.returncode == 0, err
    last = out.splitlines()[-1].split()
    assert last[4:7] == ["WORKFLOW_STATE", "-", "succeeded"]
    run.communicate(timeout=DEADLINE)
    assert run.returncode == 0


def test_events_of_an_unknown_workflow_exit_2(sqlite_cli, capsys):
    code, lines, err = events(sqlite_cli, capsys, "12")
    assert (code, lines, err) == (2, [], "broker: no workflow with id 12\n")


def test_output_into_a_closed_pipe_ends_quietly(sqlite_cli):
    import os
    import subprocess

    assert sqlite_cli("run", str(EXAMPLES / "hello.xml")).returncode == 0
    buffered = {k: v for k, v in sqlite_cli.env.items() if k != "PYTHONUNBUFFERED"}
    for env in (buffered, {**buffered, "PYTHONUNBUFFERED": "1"}):
        for argv in (sqlite_cli.args("events", "1"), sqlite_cli.args("status", "1")):
            read_end, write_end = os.pipe()
            os.close(read_end)  # like `| head` that has already exited
            try:
                result = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env,
                                        timeout=DEADLINE)
            finally:
                os.close(write_end)
            assert (result.returncode, result.stderr) == (0, ""), argv


def test_on_a_terminal_a_header_names_the_fields_and_a_pipe_gets_the_events_only(sqlite_cli):
    import os
    import subprocess

    assert sqlite_cli("run", str(EXAMPLES / "hello.xml")).returncode == 0
    primary, secondary = os.openpty()
    try:
        result = subprocess.run(sqlite_cli.args("events", "1"), stdout=secondary, stderr=subprocess.PIPE,
                                env=sqlite_cli.env, timeout=DEADLINE)
        os.close(secondary)
        seen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(primary)
    assert result.returncode == 0, result.stderr
    lines = seen.decode().splitlines()
    assert lines[0] == "ID TIME SEQ LEVEL TYPE NODE STATE MESSAGE"
    assert lines[1].split()[4] == "WORKFLOW_SUBMITTED"
    piped = sqlite_cli("events", "1")
    assert piped.stdout.splitlines()[0].split()[4] == "WORKFLOW_SUBMITTED"
