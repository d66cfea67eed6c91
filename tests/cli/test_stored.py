"""Stored workflows from the command line: ``broker workflow add|list|show|remove``, versions by content,
who may change a name, and ``broker run NAME[@VERSION] --arg``: arguments checked, reaching payloads as
``WB_ARG_<name>`` and template values, driving a sweep, recorded as the workflow's origin, and inert in a shell.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.helpers import EXAMPLES, workflow

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes

#: a workflow whose payloads show an argument both ways: through the environment and through a template
ECHO = workflow("""
    <parameters>
      <parameter name="word" type="string" required="true"/>
      <parameter name="count" type="int" default="2"/>
      <parameter name="sizes" type="int" list="true" default="1"/>
    </parameters>
    <node id="env"><payload type="sh">printf '%s|%s\\n' "$WB_ARG_word" "$WB_ARG_count" > out.txt</payload></node>
    <node id="tpl"><payload type="sh" template="true">printf '%s\\n' {{ word }} > out.txt; echo {{ count }} >> out.txt</payload></node>
    <sweep id="s">
      <param name="size"><fromArgument name="sizes"/></param>
      <body><node id="b"><payload type="sh">echo "$WB_PARAM_size" > out.txt</payload></node></body>
    </sweep>
""", name="echo")


def _out(node) -> str:
    return (Path(node.workdir) / "out.txt").read_text()


def test_add_list_show_and_versions_by_content(cli):
    first = cli.file("echo.xml", ECHO)
    added = cli("workflow", "add", str(first))
    assert added.returncode == 0, added.stderr
    assert added.stdout == "stored workflow echo@1 (3 parameters)\n"
    again = cli("workflow", "add", str(first))
    assert again.stdout == ("stored workflow echo@1 unchanged: the content is identical to that version's "
                            "(no new version)\n")
    changed = cli.file("echo2.xml", ECHO.replace("default=\"2\"", "default=\"5\""))
    assert cli("workflow", "add", str(changed)).stdout == "stored workflow echo@2 (3 parameters)\n"
    assert cli("workflow", "add", str(changed), "--name", "other").stdout == "stored workflow other@1 (3 parameters)\n"

    listing = json.loads(cli("workflow", "list", "--json").stdout)
    assert [(e["name"], e["version"], e["versions"], e["owner"], e["workflow"]) for e in listing] == [
        ("echo", 2, 2, "tester", "echo"), ("other", 1, 1, "tester", "echo")]
    shown = json.loads(cli("workflow", "show", "echo@1", "--json").stdout)
    assert shown["version"] == 1 and [v["version"] for v in shown["versions"]] == [1, 2]
    assert {p["name"]: p["default"] for p in shown["parameters"]} == {"word": None, "count": "2", "sizes": "1"}
    assert json.loads(cli("workflow", "show", "echo", "--json").stdout)["parameters"][1]["default"] == "5"
    assert cli("workflow", "show", "echo@1", "--descriptor").stdout == ECHO
    text = cli("workflow", "show", "echo").stdout
    assert "echo@2 (of 2 versions)" in text and re.search(r"\nword +string +yes +- *\n", text)
    missing = cli("workflow", "show", "echo@7")
    assert (missing.returncode, missing.stderr) == (2, "broker: stored workflow 'echo' has no version 7\n")


def test_add_checks_the_description_and_the_name(sqlite_cli):
    cli = sqlite_cli
    bad = cli.file("bad.xml", workflow('<node id="a"><dependsOn node="zz"/><payload type="sh">true</payload></node>'))
    refused = cli("workflow", "add", str(bad))
    assert refused.returncode == 1
    assert refused.stderr == f"{bad}:2:0: node 'a': depends on 'zz', but there is no node 'zz' at the top level\n"
    spaced = cli.file("spaced.xml", workflow('<node id="a"><payload type="sh">true</payload></node>', name="my flow"))
    named = cli("workflow", "add", str(spaced))
    assert named.returncode == 2
    assert named.stderr == ("broker: 'my flow' is not a valid stored workflow name: letters, digits, '_', '.', '-', "
                            "1 to 64 characters, not starting with '.' or '-' (the workflow's name attribute; give "
                            "one with --name)\n")
    assert cli("workflow", "add", str(spaced), "--name", "x@1").returncode == 2
    assert cli("workflow", "add", str(spaced), "--name", "flow").returncode == 0


def test_only_the_owner_or_an_admin_adds_versions_or_removes_a_name(sqlite_cli):
    cli = sqlite_cli
    path = cli.file("echo.xml", ECHO)
    assert cli("workflow", "add", str(path)).returncode == 0
    changed = cli.file("echo2.xml", ECHO.replace("default=\"2\"", "default=\"3\""))
    mallory = {"BROKER_ENGINE_USER": "mallory"}
    overwrite = cli("workflow", "add", str(changed), "--name", "echo", env=mallory)
    assert (overwrite.returncode, overwrite.stderr) == (2, "broker: stored workflow 'echo' belongs to user tester\n")
    assert cli("workflow", "remove", "echo", env=mallory).returncode == 2
    assert cli("user", "add", "boss", "--admin", "--password-stdin", stdin="pw\n").returncode == 0
    boss = {"BROKER_ENGINE_USER": "boss"}
    assert cli("workflow", "add", str(changed), "--name", "echo", env=boss).stdout.startswith("stored workflow echo@2")
    listing = json.loads(cli("workflow", "list", "--json").stdout)
    assert [(e["name"], e["version"], e["owner"]) for e in listing] == [("echo", 2, "tester")]  # still tester's
    ran = cli("run", "echo@1", "--arg", "word=hi", env=mallory)  # anyone may run it
    assert ran.returncode == 0, ran.stderr
    removed = cli("workflow", "remove", "echo", env=boss)
    assert removed.stdout == ("removed stored workflow echo (2 versions); 1 workflow submitted from it keeps its "
                              "description and origin\n")
    assert json.loads(cli("workflow", "list", "--json").stdout) == []
    (wf,) = cli.workflows()
    assert (wf.origin_name, wf.origin_version, wf.state) == ("echo", 1, "succeeded")
    gone = cli("run", "echo", "--arg", "word=hi")
    assert gone.returncode == 2 and "no stored workflow 'echo'" in gone.stderr


def test_run_by_name_passes_arguments_to_payloads_and_records_the_origin(cli):
    assert cli("workflow", "add", str(cli.file("echo.xml", ECHO))).returncode == 0
    ran = cli("run", "echo@1", "--arg", "word=it's a \"test\"", "--arg", "sizes=2..6:2")
    assert ran.returncode == 0, ran.stderr
    (wf,) = cli.workflows()
    assert ran.stdout.splitlines()[0] == f"submitted workflow {wf.global_id} (id {wf.id}): echo from stored workflow echo@1"
    nodes = cli.nodes()
    assert _out(nodes["env"]) == "it's a \"test\"|2\n"
    assert _out(nodes["tpl"]) == "it's a \"test\"\n2\n"
    assert sorted(_out(nodes[f"s[{i}]/b"]) for i in range(3)) == ["2\n", "4\n", "6\n"]
    assert (wf.origin_name, wf.origin_version) == ("echo", 1)
    assert wf.arguments == [["word", "it's a \"test\""], ["count", "2"], ["sizes", "2..6:2"]]
    status = json.loads(cli("status", wf.global_id, "--json").stdout)
    assert status["origin"] == "echo@1" and status["arguments"]["sizes"] == "2..6:2"
    text = cli("status", wf.global_id).stdout
    assert "from       echo@1" in text and "arguments  word=it's a \"test\", count=2, sizes=2..6:2" in text


def test_argument_errors_are_one_line_and_exit_2_without_submitting(sqlite_cli):
    cli = sqlite_cli
    path = cli.file("echo.xml", ECHO)
    for args, message in [
        ((), "broker: missing required argument 'word' (string)\n"),
        (("--arg", "word=a", "--arg", "colour=red"),
         "broker: unknown argument 'colour' (the workflow's parameters: word, count, sizes)\n"),
        (("--arg", "word=a", "--arg", "count=many"), "broker: argument 'count' (int): 'many' is not an integer\n"),
        (("--arg", "word"), "broker: argument 'word' is not NAME=VALUE (a name is a letter or '_' then letters, "
                            "digits or '_', at most 64)\n"),
    ]:
        result = cli("run", str(path), *args)
        assert (result.returncode, result.stderr) == (2, message), args
    assert cli.workflows() == []


def test_an_existing_file_wins_over_a_stored_name(sqlite_cli):
    cli = sqlite_cli
    assert cli("workflow", "add", str(EXAMPLES / "hello.xml"), "--name", "hello").returncode == 0
    cli.file("hello", ECHO)  # a file in the working directory named like the stored workflow
    ran = cli("run", "hello", "--arg", "word=from-the-file")
    assert ran.returncode == 0, ran.stderr
    (wf,) = cli.workflows()
    assert wf.name == "echo" and wf.origin_name is None and wf.arguments[0] == ["word", "from-the-file"]
    assert "an existing file path wins over a stored name" in " ".join(cli("run", "--help").stdout.split())


def test_a_shell_injection_through_an_argument_is_inert(sqlite_cli):
    cli = sqlite_cli
    marker = cli.tmp / "pwned"
    value = f"$(touch {marker}); `touch {marker}`; ' ; touch {marker}; echo '"
    ran = cli("run", str(cli.file("echo.xml", ECHO)), "--arg", f"word={value}")
    assert ran.returncode == 0, ran.stderr
    nodes = cli.nodes()
    assert _out(nodes["env"]) == f"{value}|2\n"
    assert _out(nodes["tpl"]) == f"{value}\n2\n"
    assert not marker.exists()


def test_a_file_argument_reaches_the_payload_as_the_files_content(sqlite_cli):
    cli = sqlite_cli
    doc = cli.file("file.xml", workflow("""
        <parameters><parameter name="input" type="file" required="true"/></parameters>
        <node id="a"><payload type="sh">printf '%s' "$WB_ARG_input" > out.txt</payload></node>"""))
    data = cli.file("data.txt", "line 1\nline 2\n")
    assert cli("run", str(doc), "--arg", f"input={data}").returncode == 0
    assert _out(cli.nodes()["a"]) == "line 1\nline 2\n"
    missing = cli("run", str(doc), "--arg", f"input={cli.tmp / 'nope'}")
    assert missing.returncode == 2
    assert missing.stderr == f"broker: argument 'input' (file): cannot read '{cli.tmp / 'nope'}': No such file or directory\n"


def test_the_same_file_with_other_arguments_is_a_new_workflow_not_a_resume(sqlite_cli):
    cli = sqlite_cli
    path = str(cli.file("echo.xml", ECHO))
    assert cli("run", path, "--arg", "word=a").returncode == 0
    assert cli("run", path, "--arg", "word=b").returncode == 0
    assert [w.arguments[0][1] for w in cli.workflows()] == ["a", "b"]
