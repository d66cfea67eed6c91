"""``broker run FILE``: exit codes, summary, progress display, and the errors it reports in one line."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

import pytest

from tests.cli.helpers import BROKER, DEADLINE, EXAMPLES, workflow

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def test_a_succeeding_example_exits_0_and_prints_the_summary(cli):
    result = cli("run", str(EXAMPLES / "diamond.xml"))
    assert result.returncode == 0, result.stderr
    (wf,) = cli.workflows()
    assert wf.state == "succeeded"
    lines = result.stdout.splitlines()
    assert lines[0] == f"submitted workflow {wf.global_id} (id {wf.id}): diamond"
    assert lines[1] == f"workflow {wf.global_id} (diamond): succeeded"
    assert re.fullmatch(r"  succeeded +4", lines[2])
    assert "nodes that did not succeed:" not in result.stdout
    assert any(line.startswith("  wall time ") for line in lines)
    assert {n.state for n in cli.nodes().values()} == {"succeeded"}


def test_a_failing_example_exits_1_and_lists_the_failed_and_skipped_nodes(cli):
    result = cli("run", str(EXAMPLES / "failing.xml"))
    assert result.returncode == 1, result.stderr
    assert cli.workflows()[0].state == "failed"
    out = result.stdout
    assert ": failed\n" in out
    table = out.split("nodes that did not succeed:\n", 1)[1].splitlines()
    assert table[0].split() == ["NODE", "STATE", "EXIT", "MESSAGE"]
    assert table[1].split()[:3] == ["broken", "failed", "3"]
    assert [row.split()[:2] for row in table[2:4]] == [["analyse", "skipped"], ["publish", "skipped"]]


def test_an_invalid_description_prints_each_problem_and_exits_1_without_touching_the_database(fresh_cli):
    bad = fresh_cli.file("bad.xml", workflow("""
        <node id="a"><dependsOn node="zz"/><payload type="sh">echo</payload></node>"""))
    result = fresh_cli("run", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:2:0: node 'a': depends on 'zz', but there is no node 'zz' at the top level"]
    assert result.stdout == ""
    assert not (fresh_cli.tmp / "db").exists()


def test_an_unreadable_file_exits_2(fresh_cli):
    result = fresh_cli("run", str(fresh_cli.tmp / "missing.xml"))
    assert result.returncode == 2
    assert result.stderr == f"{fresh_cli.tmp / 'missing.xml'}: cannot read: No such file or directory\n"


def test_the_first_run_creates_and_migrates_the_embedded_database(fresh_cli):
    result = fresh_cli("run", str(EXAMPLES / "hello.xml"))
    assert result.returncode == 0, result.stderr
    assert fresh_cli.workflows()[0].state == "succeeded"


def test_a_description_can_come_from_standard_input(sqlite_cli):
    result = sqlite_cli("run", "-", stdin=(EXAMPLES / "hello.xml").read_text())
    assert result.returncode == 0, result.stderr
    assert ": hello\n" in result.stdout


def test_a_database_held_by_a_process_that_takes_no_workflows_is_one_line_and_exit_3(sqlite_cli):
    """A lock held without a running engine (`broker cancel`, `broker admin` at work): nothing to hand over to
    (a broker that takes workflows: tests/cli/test_handoff.py)."""
    from broker.persistence.lock import BrokerLock

    with BrokerLock(sqlite_cli.url):
        result = sqlite_cli("run", str(EXAMPLES / "hello.xml"))
    assert result.returncode == 3
    assert result.stderr == (f"broker: another broker is using {sqlite_cli.tmp / 'broker.db'}; it takes no workflows "
                             "from other processes: try again once it has ended\n")
    assert sqlite_cli.workflows() == []


def test_an_owner_that_is_not_a_valid_user_name_says_how_to_set_one(sqlite_cli):
    result = sqlite_cli("run", str(EXAMPLES / "hello.xml"), env={"BROKER_ENGINE_USER": "Not Valid"})
    assert result.returncode == 2
    assert result.stderr.startswith("broker: [engine] user is not a valid broker user name ('Not Valid'")
    assert "BROKER_ENGINE_USER" in result.stderr


def test_without_a_terminal_progress_is_plain_lines_at_each_state_change(sqlite_cli):
    result = sqlite_cli("run", str(EXAMPLES / "diamond.xml"))
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    assert re.fullmatch(r"\[0:\d\d\]  succeeded  4/4 done  succeeded 4  .*nodes/s", progress[-1])
    assert any("  running  " in line for line in progress)


def test_on_a_terminal_the_status_line_is_redrawn_in_place(sqlite_cli):
    slow = sqlite_cli.file("slow.xml", workflow("""
        <node id="a"><payload type="sh">sleep 1</payload></node>
        <node id="b"><dependsOn node="a"/><payload type="sh">echo b</payload></node>"""))
    primary, secondary = os.openpty()
    try:
        proc = subprocess.Popen(sqlite_cli.args("run", str(slow)), stdout=subprocess.PIPE, stderr=secondary,
                                env=sqlite_cli.env, cwd=sqlite_cli.tmp, text=True)
        os.close(secondary)
        seen = b""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            ready, _, _ = select.select([primary], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the command has closed its end of the terminal
                    break
                if not chunk:
                    break
                seen += chunk
        out, _ = proc.communicate(timeout=DEADLINE)
    finally:
        os.close(primary)
    assert proc.returncode == 0
    text = seen.decode()
    redraws = text.count("\r")
    assert redraws >= 3, text  # at ~5 Hz, a workflow of more than a second redraws several times
    assert "\x1b[K" in text
    assert "  running  " in text
    assert text.endswith("\r\x1b[K")  # the status line is cleared before the summary
    assert ": succeeded\n" in out


def test_help_never_opens_the_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'nowhere' / 'broker.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    for argv in (["--help"], ["run", "--help"], ["status", "--help"], ["cancel", "--help"]):
        result = subprocess.run([str(BROKER), *argv], capture_output=True, text=True, timeout=DEADLINE,
                                env={**env, "BROKER_DATABASE_URL": url})
        assert result.returncode == 0, result.stderr
        assert "usage: broker" in result.stdout
    assert not (tmp_path / "nowhere").exists()


def test_building_the_command_line_imports_no_database_or_service_library():
    code = ("import sys; from broker.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'sqlalchemy', 'alembic', 'spyne', 'stomp', 'pykka', 'lxml', 'jinja2'}))")
    result = subprocess.run([str(BROKER.parent / "python"), "-c", code], capture_output=True, text=True,
                            timeout=DEADLINE)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_collector_waits_longer_while_a_run_starts_then_as_usual_with_the_start_up_frozen(sqlite_cli):
    import gc

    default = gc.get_threshold()[0]
    code = ("import gc, sys\n"
            "import broker.cli, broker.cli.run as run\n"
            "follow = run.follow\n"
            "def watched(*args):\n"
            "    print('starting', gc.get_threshold()[0])\n"
            "    code = follow(*args)\n"
            "    print('following', gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
            "    return code\n"
            "run.follow = watched\n"
            "broker.cli.console()\n")
    argv = sqlite_cli.args("run", str(EXAMPLES / "hello.xml"))[1:]
    result = subprocess.run([str(BROKER.parent / "python"), "-c", code, *argv], capture_output=True, text=True,
                            timeout=DEADLINE, env=sqlite_cli.env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("starting", "following"))]
    # and what the start made is frozen: out of every later collection's walk
    assert lines == ["starting 50000", f"following {default} True"], result.stdout


def test_each_command_is_built_alone_from_its_own_module_and_help_lists_them_all():
    import argparse

    from broker.cli import COMMAND_MODULES, build_parser

    def commands(parser: argparse.ArgumentParser) -> list[str]:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return list(sub.choices)

    every = commands(build_parser())
    assert sorted(every) == sorted(COMMAND_MODULES)
    for command in every:
        alone = commands(build_parser(["--config", "run", "--debug", command, "--help"]))
        assert command in alone and set(alone) == {c for c, m in COMMAND_MODULES.items()
                                                   if m == COMMAND_MODULES[command]}
    for argv in ([], ["--help"], ["--debug", "-h", "run"], ["nonsense", "run"], ["--version"]):
        assert commands(build_parser(argv)) == every


#: what a plain `broker run` (a migrated SQLite database, a local sh payload, no template, no staging) must not
#: import: start-up that such a run does not use (alembic only migrates; spyne, cheroot: the API; stomp: a
#: STOMP bus; jinja2: template payloads; paramiko: SSH hosts; psycopg and SQLAlchemy's PostgreSQL dialect: a
#: PostgreSQL database; xmlschema: lxml validates the descriptions; http.client, urllib.request: http(s)://
#: staging and an elf's push)
NOT_ON_THE_RUN_PATH = ("alembic", "spyne", "cheroot", "stomp", "jinja2", "paramiko", "psycopg", "psycopg2",
                       "xmlschema", "sqlalchemy.dialects.postgresql", "http.client", "urllib.request",
                       "broker.api", "broker.ui", "broker.resources.sshpool", "broker.persistence.migrate")


def test_a_plain_run_imports_and_prepares_nothing_it_does_not_use(sqlite_cli):
    # not a timed test: what start-up must not do is named, so a change that adds it back fails here whatever
    # the machine's speed; the TLS context (the system's CA certificates, 30 ms) only for https:// staging
    code = ("import ssl, sys\n"
            "made = []\n"
            "create = ssl.create_default_context\n"
            "ssl.create_default_context = lambda *a, **k: made.append('TLS context') or create(*a, **k)\n"
            "from broker.cli import main\n"
            "code = main(sys.argv[1:])\n"
            f"print(sorted(m for m in sys.modules if m.startswith({NOT_ON_THE_RUN_PATH!r})) + made)\n"
            "sys.exit(code)\n")
    argv = sqlite_cli.args("run", str(EXAMPLES / "hello.xml"))[1:]
    result = subprocess.run([str(BROKER.parent / "python"), "-c", code, *argv], capture_output=True, text=True,
                            timeout=DEADLINE, env=sqlite_cli.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_a_workflow_that_would_pass_the_users_node_limit_is_refused_with_exit_1(cli):
    # an unfinished workflow of the same user left by an earlier run: this run does not track it, it counts
    from broker.config import Settings
    from broker.description.load import load_description
    from broker.persistence import repository
    from tests.cli.helpers import OWNER

    earlier = workflow('<node id="a"><payload type="sh">true</payload></node>\n'
                       '<node id="b"><payload type="sh">true</payload></node>\n'
                       '<node id="c"><payload type="sh">true</payload></node>')
    with cli.sessions.begin() as s:
        repository.submit_workflow(s, load_description(earlier.encode(), Settings()), descriptor=earlier,
                                   owner=repository.ensure_user(s, OWNER))
    path = cli.file("two.xml", workflow('<node id="x"><payload type="sh">true</payload></node>\n'
                                        '<node id="y"><payload type="sh">true</payload></node>'))
    result = cli("run", str(path), env={"BROKER_LIMITS_MAX_NODES_PER_USER": "4"})
    assert result.returncode == 1, result.stderr
    assert result.stderr == (f"broker: a workflow of 2 nodes would bring the unfinished workflows of user {OWNER} "
                             "to 5 nodes, limit 4 ([limits] max_nodes_per_user)\n")
    assert len(cli.workflows()) == 1
    assert cli("run", str(path), env={"BROKER_LIMITS_MAX_NODES_PER_USER": "5"}).returncode == 0


def test_validate_counts_the_nodes_a_run_reports_and_names_sweeps_that_grow_at_run_time(sqlite_cli, capsys):
    from broker.cli import main

    for name, nodes in (("sweep", 8), ("nested-sweep", 9), ("tolerance", 11)):
        assert main(["validate", str(EXAMPLES / f"{name}.xml")]) == 0
        assert capsys.readouterr().out.endswith(f": {nodes} nodes to run)\n"), name
        result = sqlite_cli("run", str(EXAMPLES / f"{name}.xml"))
        assert f"  total      {nodes} nodes, {nodes} done\n" in result.stdout, name
    assert main(["validate", str(EXAMPLES / "output-sweep.xml")]) == 0
    assert capsys.readouterr().out == (
        f"{EXAMPLES / 'output-sweep.xml'}: valid (3 node definitions, 1 sweep: 3 nodes to run, counting one member "
        "of sweep 'process', whose values come from upstream outputs: it can add nodes at run time)\n")


def test_a_node_waiting_for_its_retry_leaves_the_workflow_running_in_the_progress_lines(sqlite_cli):
    marker = sqlite_cli.tmp / "tried"
    path = sqlite_cli.file("retry.xml", workflow(f"""
        <node id="flaky">
          <execution><retry count="1" backoff="300ms"/></execution>
          <payload type="sh">if [ -e "{marker}" ]; then echo second; else touch "{marker}"; exit 1; fi</payload>
        </node>"""))
    result = sqlite_cli("run", str(path))
    assert result.returncode == 0, result.stderr
    assert sqlite_cli.nodes()["flaky"].attempt == 2
    # a plain line is printed at each change of the workflow's state: the retry is not one
    states = [line.split()[1] for line in result.stderr.splitlines() if line.startswith("[")]
    assert states == ["accepted", "running", "succeeded"], result.stderr
