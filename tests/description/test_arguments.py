"""Workflow parameters and arguments: declaration problems at their lines, every argument error as one clear
line, normalisation, ``<fromArgument>`` sweeps bound at submission, and the shadowing rule."""

from __future__ import annotations

import pytest

from broker.config import Settings
from broker.description.arguments import bind, local_reader, parse_assignments
from broker.description.load import load_description
from broker.errors import ArgumentError, LimitExceeded
from tests.description.helpers import problems, workflow

PARAMS = """
    <parameters>
      <parameter name="sample" type="string" required="true"><description>the sample</description></parameter>
      <parameter name="n" type="int" default="3"/>
      <parameter name="x" type="float" default="0.5"/>
      <parameter name="verbose" type="bool" default="no"/>
      <parameter name="mode" type="one-of" default="fast"><choice>fast</choice><choice>exact</choice></parameter>
      <parameter name="input" type="file"/>
      <parameter name="sizes" type="int" list="true" default="1,2"/>
    </parameters>
    <node id="a"><payload type="sh">true</payload></node>
    <sweep id="s">
      <param name="size"><fromArgument name="sizes"/></param>
      <body><node id="b"><payload type="sh">true</payload></node></body>
    </sweep>
"""


@pytest.fixture
def spec():
    return load_description(workflow(PARAMS), Settings())


def test_declared_parameters_are_built_with_normalised_defaults(spec):
    by_name = {p.name: p for p in spec.parameters}
    assert list(by_name) == ["sample", "n", "x", "verbose", "mode", "input", "sizes"]
    assert by_name["sample"].required and by_name["sample"].description == "the sample"
    assert by_name["verbose"].default == "false"
    assert by_name["mode"].choices == ("fast", "exact")
    assert by_name["sizes"].multiple
    sweep = spec.nodes[1]
    assert sweep.params[0].source == "argument" and sweep.params[0].values == ("1", "2")


def test_binding_applies_defaults_and_normalises_every_type(spec):
    bound = bind(spec, {"sample": "s1", "n": "+007", "x": "2e1", "verbose": "YES", "sizes": "0..10:5"}, Settings().limits)
    assert dict(bound.arguments) == {"sample": "s1", "n": "7", "x": "20", "verbose": "true", "mode": "fast",
                                     "sizes": "0..10:5"}
    assert bound.nodes[1].params[0].values == ("0", "5", "10")
    assert "input" not in dict(bound.arguments)  # optional, no default: unbound


@pytest.mark.parametrize("given, message", [
    ({}, "missing required argument 'sample' (string: the sample)"),
    ({"sample": "a", "colour": "red"}, "unknown argument 'colour' (the workflow's parameters: sample, n, x, verbose, "
                                       "mode, input, sizes)"),
    ({"sample": "a", "n": "3.5"}, "argument 'n' (int): '3.5' is not an integer"),
    ({"sample": "a", "n": "99999999999999999999"}, "argument 'n' (int): '99999999999999999999' is not an integer"),
    ({"sample": "a", "x": "nan"}, "argument 'x' (float): 'nan' is not a number"),
    ({"sample": "a", "verbose": "maybe"}, "argument 'verbose' (bool): 'maybe' is not a boolean (true or false)"),
    ({"sample": "a", "mode": "slow"}, "argument 'mode' (one-of): 'slow' is not one of 'fast', 'exact'"),
    ({"sample": "a", "sizes": "1,two"}, "argument 'sizes' (list of int): item 2 'two' is not an integer"),
    ({"sample": "a", "sizes": "1..2:0.5"}, "argument 'sizes' (range of int): '1..2:0.5': has a bound or step that "
                                           "is not an integer"),
    ({"sample": "a\0b"}, "argument 'sample' contains a NUL character"),
])
def test_each_argument_error_is_one_clear_line(spec, given, message):
    with pytest.raises(ArgumentError) as refused:
        bind(spec, given, Settings().limits)
    assert str(refused.value) == message


def test_a_missing_or_unreadable_file_argument_names_the_file(spec, tmp_path):
    limits = Settings().limits
    with pytest.raises(ArgumentError, match=r"argument 'input' \(file\): cannot read '.*nope': No such file"):
        bind(spec, {"sample": "a", "input": str(tmp_path / "nope")}, limits, read_file=local_reader(limits))
    (tmp_path / "big").write_bytes(b"x" * 100)
    small = Settings().replace("limits", max_argument_bytes=10).limits
    with pytest.raises(LimitExceeded, match=r"larger than 10 bytes \(\[limits\] max_argument_bytes\)"):
        bind(spec, {"sample": "a", "input": str(tmp_path / "big")}, small, read_file=local_reader(small))
    (tmp_path / "in.txt").write_text("line 1\nline 2\n")
    bound = bind(spec, {"sample": "a", "input": str(tmp_path / "in.txt")}, limits, read_file=local_reader(limits))
    assert dict(bound.arguments)["input"] == "line 1\nline 2\n"


def test_an_argument_sweep_is_held_to_the_expansion_limits_at_binding(spec):
    limits = Settings().replace("limits", max_members=10).limits
    with pytest.raises(LimitExceeded, match=r"sweep 's': these arguments expand it to 11 members, over the limit "
                                            r"of 10 \(\[limits\] max_members\)"):
        bind(spec, {"sample": "a", "sizes": "0..10"}, limits)
    with pytest.raises(LimitExceeded, match=r"over the limit of 5 \(\[limits\] max_values\)"):
        bind(spec, {"sample": "a", "sizes": "1,2,3,4,5,6"}, Settings().replace("limits", max_values=5).limits)


def test_assignments_must_be_name_equals_value_and_not_repeated():
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ArgumentError, match="argument 'a' is given twice"):
        parse_assignments(["a=1", "a=2"])
    with pytest.raises(ArgumentError, match="is not NAME=VALUE"):
        parse_assignments(["1a=2"])


def test_a_sweep_parameter_named_like_a_workflow_parameter_is_refused_at_its_line():
    source = workflow("""
        <parameters><parameter name="size" type="int" default="1"/></parameters>
        <sweep id="s">
          <param name="size"><value>1</value></param>
          <body><node id="b"><payload type="sh">true</payload></node></body>
        </sweep>""")
    assert problems(source) == [
        "bad.xml:4:0: sweep 's': parameter 'size' has the name of the workflow parameter declared at line 2 (an "
        "argument is in scope in every sweep: rename one of them)"]


def test_declaration_problems_are_reported_at_their_lines():
    source = workflow("""
        <parameters>
          <parameter name="a" type="int" default="x"/>
          <parameter name="b" type="one-of"/>
          <parameter name="c" required="true" default="1"/>
          <parameter name="d" type="file" default="/etc/passwd"/>
          <parameter name="a"/>
          <parameter name="e" type="string"><choice>x</choice></parameter>
        </parameters>
        <sweep id="s">
          <param name="p"><fromArgument name="zz"/></param>
          <param name="q"><fromArgument name="d"/></param>
          <body><node id="b"><payload type="sh">true</payload></node></body>
        </sweep>""")
    assert problems(source) == [
        "bad.xml:3:0: parameter 'a': default: (int): 'x' is not an integer",
        "bad.xml:4:0: parameter 'b': a one-of parameter needs <choice> elements",
        "bad.xml:5:0: parameter 'c': a required parameter has no default",
        "bad.xml:6:0: parameter 'd': a file parameter has no default",
        "bad.xml:7:0: duplicate parameter 'a' (first declared at line 3)",
        "bad.xml:8:0: parameter 'e': <choice> elements need type 'one-of', not 'string'",
        "bad.xml:11:0: sweep 's': parameter 'p': <fromArgument> names 'zz', which is not a declared workflow "
        "parameter",
        "bad.xml:12:0: sweep 's': parameter 'q': <fromArgument> names file parameter 'd' (a file is one value, not "
        "a list to sweep over)",
    ]


def test_the_xsd_refuses_an_unknown_parameter_type():
    source = workflow("""
        <parameters><parameter name="a" type="date"/></parameters>
        <node id="b"><payload type="sh">true</payload></node>""")
    (problem,) = problems(source)
    assert problem.startswith("bad.xml:2:") and "date" in problem
