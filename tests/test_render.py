"""Payload rendering: hostile parameter values executed by real shells, the sandbox, and its limits."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from broker.description.model import Payload
from broker.errors import RenderError
from broker.render import NodeInfo, check_template, render
from tests.fixtures import require

NODE = NodeInfo(workflow_global_id="wf-01jd3k2m9x7q4tz8ha0c", node_path="sweep[3]/step", attempt=2)

HOSTILE = [
    "$(touch CANARY)", "`touch CANARY`", "'; touch CANARY; '", '"; touch CANARY; "', "a\nb\n$(touch CANARY)\n",
    "$HOME", "${HOME}", "ünïcødé 日本 🎉", "back\\slash\\", "-n", "*", " spaced  out ", "", "!!", "tab\there",
    "x'y\"z", "$((1+1))", "\\'", "%s%n", "carriage\rreturn",
]
NOT_FOR_CSH = ("\n", "!")


def payload(kind, text, template=True):
    return Payload(type=kind, text=text, template=template)


def run_rendered(tmp_path, rendered, interpreter):
    script = tmp_path / "payload"
    script.write_text(rendered.text)
    env = dict(os.environ, **dict(rendered.env))
    subprocess.run([interpreter, str(script)], cwd=tmp_path, env=env, check=True, timeout=30,
                   stdin=subprocess.DEVNULL)
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("shell", ["bash", "sh"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_a_shell_payload_byte_exact_and_never_run(tmp_path, shell, value):
    text = "printf '%s' {{ v }} > from-template\nprintf '%s' \"$WB_PARAM_v\" > from-env\n"
    rendered = render(payload(shell, text), node=NODE, bindings=[("v", value)])
    run_rendered(tmp_path, rendered, shell)
    assert (tmp_path / "from-template").read_bytes() == value.encode()
    assert (tmp_path / "from-env").read_bytes() == value.encode()


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_become_python_literals(tmp_path, value):
    text = "import sys\nsys.stdout.buffer.write({{ v }}.encode())\n"
    rendered = render(payload("python", text), node=NODE, bindings=[("v", value)])
    script = tmp_path / "payload.py"
    script.write_text(rendered.text)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out == value.encode()
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("value", ["a\nb", "a!b", "!!", "\n"])
def test_csh_refuses_values_it_cannot_quote(value):
    with pytest.raises(RenderError, match=r"node 'sweep\[3\]/step': payload template line 2: the value of "
                                          r"parameter 'v'.*csh cannot quote"):
        render(payload("csh", "echo start\necho {{ v }}\n"), node=NODE, bindings=[("v", value)])


@pytest.mark.parametrize("value", [v for v in HOSTILE if not any(bad in v for bad in NOT_FOR_CSH)])
def test_hostile_values_reach_a_csh_payload_byte_exact(tmp_path, value):
    require(shutil.which("csh") is not None, "csh (Debian package csh, installed by tests/services/tools.sh)")
    rendered = render(payload("csh", "printf '%s' {{ v }} > from-template\n"), node=NODE, bindings=[("v", value)])
    script = tmp_path / "payload"
    script.write_text(rendered.text)
    subprocess.run(["csh", "-f", str(script)], cwd=tmp_path, check=True, timeout=30, stdin=subprocess.DEVNULL)
    assert (tmp_path / "from-template").read_bytes() == value.encode()
    assert not (tmp_path / "CANARY").exists()


def test_a_parameter_named_path_cannot_replace_path(tmp_path):
    text = 'printf "%s\\n%s" "$PATH" "$WB_PARAM_PATH" > out\n'
    rendered = render(payload("sh", text, template=False), node=NODE, bindings=[("PATH", "/evil")])
    run_rendered(tmp_path, rendered, "sh")
    assert (tmp_path / "out").read_text() == f"{os.environ['PATH']}\n/evil"
    assert not any(name in ("PATH", "LD_PRELOAD") for name, _ in rendered.env)


def test_the_broker_variables_come_last_and_win_over_the_profile():
    rendered = render(payload("sh", "true", template=False), node=NODE._replace(workdir="/w"),
                      bindings=[("a", "outer"), ("b", "1"), ("a", "inner")],
                      env=[("LANG", "C"), ("WB_ATTEMPT", "99"), ("WB_PARAM_a", "forged")])
    assert rendered.env == (
        ("LANG", "C"), ("WB_PARAM_a", "inner"), ("WB_PARAM_b", "1"), ("WB_WORKFLOW_ID", NODE.workflow_global_id),
        ("WB_NODE_PATH", "sweep[3]/step"), ("WB_NODE_ID", "wf-01jd3k2m9x7q4tz8ha0c/sweep[3]/step"),
        ("WB_ATTEMPT", "2"), ("WB_MEMBER_INDEX", "3"), ("WB_WORKDIR", "/w"))


def test_a_payload_that_is_not_a_template_passes_through_unchanged():
    text = "echo {{ x }} {% raw %} $WB_PARAM_x\n"
    assert render(payload("bash", text, template=False), node=NODE, bindings=[("x", "1")]).text == text


def test_templates_see_parameters_node_and_workflow_and_keep_their_last_newline():
    text = "{{ x }} {{ params['my-param'] }} {{ node.path }} {{ node.member_index }} {{ workflow.id }}\n"
    rendered = render(payload("bash", text), node=NODE, bindings=[("x", "a b"), ("my-param", "c")])
    assert rendered.text == "'a b' c 'sweep[3]/step' 3 wf-01jd3k2m9x7q4tz8ha0c\n"


def test_loops_filters_and_safe_string_methods_work():
    text = "{% for f in files.split(',') %}{{ f.strip().upper() }} {% endfor %}{{ files.split(',')|join('+') }}"
    rendered = render(payload("sh", text), node=NODE, bindings=[("files", "a, b")])
    assert rendered.text == "A B 'a+ b'"


@pytest.mark.parametrize("text", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ x.__class__ }}", "{{ params.__class__.__init__ }}",
    "{{ range.__globals__ }}", "{{ self._TemplateReference__context }}", "{{ x.format(1) }}",
    "{{ '{0.__class__}'.format(x) }}", "{{ x.center(100) }}", "{{ params.update({'a': 1}) }}",
    "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}", "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}", "{{ namespace() }}", "{{ lipsum(1000000) }}",
])
def test_sandbox_escapes_are_refused(tmp_path, text):
    with pytest.raises(RenderError, match="node 'sweep\\[3\\]/step': payload template"):
        render(payload("sh", text), node=NODE, bindings=[("x", "v")])
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("text", [
    "{{ 'A' * 10**8 }}", "{{ x * 10**9 }}", "{{ 7 ** 99999 }}", "{{ '%999999999d' % 1 }}",
    "{{ x|replace('', x * 100000) }}", "{% set a = 'ab' * 1000 %}{% for i in range(100000) %}{{ a ~ a }}{% endfor %}",
    "{% for i in range(100000) %}{{ x * 1000 }}{% endfor %}", "{{ range(100000)|join('x' * 100000) }}",
    "{% macro m(n) %}{% if n > 0 %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(60) }}",
])
def test_templates_cannot_build_huge_values(text):
    started = time.monotonic()
    with pytest.raises(RenderError, match="exceed|limit"):
        render(payload("sh", text), node=NODE, bindings=[("x", "xyz")], max_output_bytes=64 * 1024)
    assert time.monotonic() - started < 10


def test_the_rendered_text_is_bounded():
    with pytest.raises(RenderError, match="exceeds the limit of 1000 bytes"):
        render(payload("sh", "x" * 1001), node=NODE, max_output_bytes=1000)
    assert len(render(payload("sh", "x" * 1000), node=NODE, max_output_bytes=1000).text) == 1000


def test_template_code_stops_at_its_time_limit():
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(RenderError, match="took longer than 0.2 s"):
        render(payload("sh", text), node=NODE, time_limit=0.2)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("text", [
    "{% set a = [x, x] %}", "{{ {'k': x} }}", "{% macro m() %}{{ varargs }}{% endmacro %}",
])
def test_literals_that_could_nest_values_are_refused(text):
    with pytest.raises(RenderError, match="only constants|not allowed"):
        render(payload("sh", text), node=NODE, bindings=[("x", "v")])


def test_an_undefined_variable_names_itself_and_its_line():
    with pytest.raises(RenderError, match=r"payload template line 2: 'nope' is undefined"):
        render(payload("sh", "echo {{ x }}\necho {{ nope }}\n"), node=NODE, bindings=[("x", "1")])


def test_a_syntax_error_is_reported_at_submission_by_check_template():
    with pytest.raises(RenderError, match=r"workflow.xml:12: payload template line 2: .*"):
        check_template(payload("sh", "ok\n{% if %}\n"), where="workflow.xml:12")
    check_template(payload("sh", "{% if %}", template=False))


def test_a_nul_in_a_value_is_refused():
    with pytest.raises(RenderError, match="parameter 'x' contains a NUL"):
        render(payload("sh", "true", template=False), node=NODE, bindings=[("x", "a\0b")])
