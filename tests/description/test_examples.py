"""Every example in conf/examples validates with default settings, has the expected size and round-trips
through JSON."""

from __future__ import annotations

import re

import pytest

from broker.config import Settings
from broker.description.load import load_description_file, spec_stats
from broker.description.model import NodeSpec, SweepSpec, from_json, to_json, walk
from tests.description.helpers import EXAMPLES

#: example -> (execute nodes, sweeps, nodes after static expansion)
EXPECTED = {
    "hello.xml": (1, 0, 1),
    "diamond.xml": (4, 0, 4),
    "sweep.xml": (3, 1, 9),
    "nested-sweep.xml": (3, 2, 12),
    "output-sweep.xml": (3, 1, 4),
    "tolerance.xml": (2, 1, 12),
    "failing.xml": (5, 0, 5),
    "arguments.xml": (2, 1, 5),  # the sweep counted with its argument's default, three sizes
    "spawn.xml": (2, 0, 2),
}


def test_every_example_file_is_listed_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.xml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_validates_with_the_expected_node_counts(name):
    stats = spec_stats(load_description_file(EXAMPLES / name, Settings()))
    assert (stats.nodes, stats.sweeps, stats.expanded) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_example_spec_round_trips_through_json(name):
    spec = load_description_file(EXAMPLES / name, Settings())
    assert from_json(to_json(spec)) == spec


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_payloads_use_only_prefixed_parameter_variables_they_declare(name):
    spec = load_description_file(EXAMPLES / name, Settings())
    declared: set[str] = set()
    for _, node in walk(spec.nodes):
        if isinstance(node, SweepSpec):
            declared |= {p.name for p in node.params}
    for _, node in walk(spec.nodes):
        if isinstance(node, NodeSpec):
            # a fragment the payload writes to spawn is a description of its own (checked below)
            text = FRAGMENT.sub("", node.payload.text)
            for used in re.findall(r"WB_PARAM_([A-Za-z_][A-Za-z0-9_]*)", text):
                assert used in declared, f"{node.id} uses an undeclared parameter {used}"


#: a fragment an example payload writes with a here-document, to spawn it
FRAGMENT = re.compile(r"<<'FRAGMENT'\n(.*?)\nFRAGMENT\n", re.S)


def test_the_fragment_the_spawn_example_writes_is_valid_with_the_node_counts_its_comment_gives():
    from broker.description.spawn import check_fragment

    spec = load_description_file(EXAMPLES / "spawn.xml", Settings())
    (text,) = FRAGMENT.findall(spec.nodes[0].payload.text)
    nodes, problems = check_fragment(text, Settings(), "more.xml", 0)
    assert problems == [] and [n.id for n in nodes] == ["fetch", "fit", "merge"]


def test_the_output_sweep_takes_its_parameter_from_a_declared_output_of_a_dependency():
    spec = load_description_file(EXAMPLES / "output-sweep.xml", Settings())
    listing, process, _ = spec.nodes
    assert isinstance(process, SweepSpec) and isinstance(listing, NodeSpec)
    param = process.params[0]
    assert (param.source, param.from_node, param.from_property) == ("output", "list", "files")
    assert param.from_node in process.depends and param.from_property in listing.outputs
    assert '@broker output files=["alpha.txt", "beta.txt", "gamma.txt"]' in listing.payload.text


def test_the_tolerance_example_tolerates_its_one_failing_trial():
    spec = load_description_file(EXAMPLES / "tolerance.xml", Settings())
    trials, summary = spec.nodes
    assert summary.requires.tolerance == 0.8
    assert trials.params[0].values == tuple(str(n) for n in range(1, 11))
    assert spec.failure.max_failed == 1
