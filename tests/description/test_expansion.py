"""Expansion of sweeps (broker.description.expansion) and static member counts."""

from __future__ import annotations

import pytest

from broker.config import Settings
from broker.description.checks import expanded_node_count, static_member_count
from broker.description.expansion import expand, member_count, param_env, value_text
from broker.description.load import load_description
from broker.description.model import Param, SweepSpec
from broker.errors import LimitExceeded
from tests.description.helpers import EXAMPLES, workflow

P = '<payload type="sh">echo</payload>'


def sweep(mode: str = "cross", **params: tuple[str, ...]) -> SweepSpec:
    return SweepSpec(id="s", mode=mode, body=(),
                     params=tuple(Param(name=n, source="list", values=v) for n, v in params.items()))


def test_cross_expansion_varies_the_last_parameter_fastest():
    s = sweep(x=("1", "2"), y=("a", "b", "c"))
    members = expand(s, {"x": ["1", "2"], "y": ["a", "b", "c"]}, max_members=100)
    assert [m.bindings for m in members] == [
        (("x", "1"), ("y", "a")), (("x", "1"), ("y", "b")), (("x", "1"), ("y", "c")),
        (("x", "2"), ("y", "a")), (("x", "2"), ("y", "b")), (("x", "2"), ("y", "c")),
    ]
    assert [m.index for m in members] == list(range(6))
    assert [m.path for m in members][:2] == ["s[0]", "s[1]"]


def test_zip_expansion_goes_position_by_position():
    s = sweep("zip", x=("1", "2", "3"), y=("a", "b", "c"))
    members = expand(s, {"x": ["1", "2", "3"], "y": ["a", "b", "c"]}, max_members=100)
    assert [m.bindings for m in members] == [(("x", "1"), ("y", "a")), (("x", "2"), ("y", "b")),
                                             (("x", "3"), ("y", "c"))]


def test_zip_expansion_refuses_different_lengths_before_building_anything():
    with pytest.raises(ValueError, match=r"parameterized node 'outer\[1\]/s': zip parameters have different "
                                         r"lengths \(x=2, y=1\)"):
        expand(sweep("zip", x=(), y=()), {"x": ["1", "2"], "y": ["a"]}, "outer[1]", max_members=100)


def test_member_paths_nest_under_the_prefix():
    members = expand(sweep(x=("1",)), {"x": ["1", "2"]}, "outer[3]/mid[0]", max_members=10)
    assert [m.path for m in members] == ["outer[3]/mid[0]/s[0]", "outer[3]/mid[0]/s[1]"]


def test_too_many_members_raise_limit_exceeded_naming_the_sweep():
    with pytest.raises(LimitExceeded) as caught:
        expand(sweep(x=(), y=()), {"x": list(range(1000)), "y": list(range(1000))}, "top[2]", max_members=999_999)
    assert str(caught.value) == "parameterized node 'top[2]/s' would expand to 1000000 members (limit 999999)"


def test_output_values_reach_payloads_as_text_strings_verbatim_the_rest_as_json():
    assert [value_text(v) for v in ["a.txt", 3, 1.5, True, None, ["x", 1], {"k": "caf\u00e9"}]] == [
        "a.txt", "3", "1.5", "true", "null", '["x",1]', '{"k":"caf\u00e9"}']
    members = expand(sweep(f=("?",)), {"f": ["a.txt", {"n": 2}]}, max_members=10)
    assert [m.bindings for m in members] == [(("f", "a.txt"),), (("f", '{"n":2}'),)]


def test_parameters_become_prefixed_environment_variables_inner_names_winning():
    assert param_env([("x", "1"), ("PATH", "/evil"), ("x", "2")]) == {"WB_PARAM_x": "2", "WB_PARAM_PATH": "/evil"}


def test_member_count_cross_is_the_product_zip_the_shortest():
    assert member_count(sweep(x=(), y=()), {"x": 3, "y": 4}) == 12
    assert member_count(sweep("zip", x=(), y=()), {"x": 3, "y": 4}) == 3


def test_static_member_counts_count_an_output_parameter_as_one_value():
    s = SweepSpec(id="s", body=(), params=(Param(name="a", source="list", values=("1", "2", "3")),
                                           Param(name="f", source="output", from_node="g", from_property="p")))
    assert static_member_count(s) == 3


def test_a_nested_sweep_expands_recursively_member_by_member():
    spec = load_description((EXAMPLES / "nested-sweep.xml").read_bytes(), Settings())
    grid = spec.nodes[0]
    outer = expand(grid, {p.name: p.values for p in grid.params}, max_members=100)
    paths = []
    for member in outer:
        for child in member.body:
            paths.append(f"{member.path}/{child.id}")
            if isinstance(child, SweepSpec):
                inner = expand(child, {p.name: p.values for p in child.params}, member.path, max_members=100)
                paths += [f"{m.path}/{c.id}" for m in inner for c in m.body]
                assert [m.bindings for m in inner] == [(("seed", "1"),), (("seed", "2"),), (("seed", "3"),)]
    assert paths == [
        "grid[0]/prepare", "grid[0]/seeds", "grid[0]/seeds[0]/run", "grid[0]/seeds[1]/run", "grid[0]/seeds[2]/run",
        "grid[1]/prepare", "grid[1]/seeds", "grid[1]/seeds[0]/run", "grid[1]/seeds[1]/run", "grid[1]/seeds[2]/run",
    ]
    # 1 (grid) + 10 paths above + 1 (summary) = the static count
    assert expanded_node_count(spec) == 1 + len(paths) + 1


def test_the_static_count_of_a_zip_sweep_uses_the_shortest_parameter():
    spec = load_description(workflow(f"""
        <sweep id="s" mode="zip">
          <param name="a"><value>1</value><value>2</value></param>
          <param name="b"><value>x</value><value>y</value></param>
          <body><node id="n">{P}</node><node id="m">{P}</node></body>
        </sweep>"""), Settings())
    assert expanded_node_count(spec) == 1 + 2 * 2
