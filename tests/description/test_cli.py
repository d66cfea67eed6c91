"""``broker validate`` through the real command: output format and exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.description.helpers import EXAMPLES, REPO, broker, workflow

P = '<payload type="sh">echo</payload>'


def test_a_valid_file_prints_its_sizes_on_stdout_and_exits_0():
    result = broker("validate", str(EXAMPLES / "nested-sweep.xml"))
    assert result.returncode == 0
    assert result.stdout.decode() == (f"{EXAMPLES / 'nested-sweep.xml'}: valid (3 node definitions, "
                                      "2 sweeps: 9 nodes to run)\n")
    assert result.stderr == b""


def test_every_example_validates_in_one_run():
    files = sorted(str(p) for p in EXAMPLES.glob("*.xml"))
    result = broker("validate", *files)
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert [line.split(": valid (")[0] for line in lines] == files
    assert f"{EXAMPLES / 'hello.xml'}: valid (1 node definition, 0 sweeps: 1 node to run)" in lines


def test_an_invalid_file_prints_every_problem_on_stderr_and_exits_1(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(workflow(f"""
        <node id="a"><dependsOn node="zz"/>{P}</node>
        <node id="a">{P}</node>"""))
    result = broker("validate", str(bad))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        f"{bad}:2:0: node 'a': depends on 'zz', but there is no node 'zz' at the top level",
        f"{bad}:3:0: node 'a': duplicate id at the top level (first used at line 2)",
    ]


def test_valid_and_invalid_files_together_exit_1_and_report_both(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<workflow")
    result = broker("validate", str(EXAMPLES / "hello.xml"), str(bad))
    assert result.returncode == 1
    assert result.stdout.decode().startswith(f"{EXAMPLES / 'hello.xml'}: valid (")
    assert result.stderr.decode() == (f"{bad}:1:10: not well-formed XML: "
                                      "Couldn't find end of Start Tag workflow line 1\n")


def test_an_unreadable_file_exits_2_even_next_to_an_invalid_one(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<workflow/>")
    missing = tmp_path / "missing.xml"
    result = broker("validate", str(bad), str(missing), str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"{bad}:1:0: the root element must be <workflow> in namespace 'urn:workflow-broker:workflow:1.0', "
        "not <workflow> without a namespace",
        f"{missing}: cannot read: No such file or directory",
        f"{tmp_path}: cannot read: Is a directory",
    ]


def test_bad_usage_exits_2():
    assert broker("validate").returncode == 2
    assert broker("validate", "--no-such-option", str(EXAMPLES / "hello.xml")).returncode == 2


def test_standard_input_is_read_for_a_dash():
    result = broker("validate", "-", stdin=(EXAMPLES / "diamond.xml").read_bytes())
    assert result.returncode == 0
    assert result.stdout.decode() == "<stdin>: valid (4 node definitions, 0 sweeps: 4 nodes to run)\n"


def test_include_dirs_and_limits_come_from_the_configuration_file(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "job.sh").write_text("echo from a file\n")
    config = tmp_path / "broker.ini"
    config.write_text("[description]\ninclude_dirs = scripts\n[limits]\nmax_nodes = 1\n")
    wf = tmp_path / "wf.xml"
    wf.write_bytes(workflow('<node id="a"><payload type="sh" ref="job.sh"/></node>'))
    assert broker("validate", "--config", str(config), str(wf)).returncode == 0
    two = tmp_path / "two.xml"
    two.write_bytes(workflow(f'<node id="a">{P}</node><node id="b">{P}</node>'))
    result = broker("validate", str(two), env={"BROKER_CONFIG": str(config)})
    assert result.returncode == 1
    assert result.stderr.decode() == (f"{two}:1:0: workflow expands to 2 nodes, over the limit of 1 "
                                      "([limits] max_nodes)\n")


def test_validation_never_imports_the_database_layer():
    code = ("import sys, argparse\n"
            "from broker.config import Settings\n"
            "from broker.cli import validate\n"
            f"code = validate.run(argparse.Namespace(files=[{str(EXAMPLES / 'sweep.xml')!r}]), Settings())\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'spyne', 'stomp'))\n"
            "print(code, heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr
