"""Floods (issue 12, section 3): attribute caps in the hardened parser, before anything that pays per attribute;
schema problems capped, so that a document with 100,000 invalid nodes is answered without locating each.

Times are printed by tests/perf/bench_floods.py, not asserted here: these tests check the answers, the peak
memory of ``broker validate``, and, by patching, that the expensive steps are never reached.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from lxml import etree

from broker.config import Settings
from broker.description import load, schema, xmlsafe
from broker.description.load import check_description
from tests.description.floods import CORPUS, NS, P, attributes_on_one_element, invalid_values_side_by_side
from tests.description.helpers import BROKER, problems, with_limits

#: the issue's memory target for `broker validate` of any document of the corpus
MEMORY_TARGET_MB = 500


@pytest.mark.slow
@pytest.mark.parametrize("flood", CORPUS, ids=[f.name for f in CORPUS])
def test_broker_validate_answers_every_flood_with_its_message_in_under_500_mb(flood, tmp_path):
    path = tmp_path / "flood.xml"
    path.write_bytes(flood.make(1.0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
    with open(tmp_path / "stderr", "w+b") as err:
        proc = subprocess.Popen([str(BROKER), "validate", str(path)], stdout=subprocess.PIPE, stderr=err, env=env)
        out = proc.stdout.read()  # until the process closes it; the times are the benchmark's to print
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: this very process's peak resident set
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        errors = err.read().decode()
    if flood.expected is None:
        assert proc.returncode == 0, errors
        assert out.decode().startswith(f"{path}: valid")
    else:
        assert proc.returncode == 1, out.decode() + errors
        assert flood.expected in errors
    assert usage.ru_maxrss / 1024 < MEMORY_TARGET_MB


def test_an_element_with_100000_attributes_is_refused_before_the_schema_sees_it(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the XSD validator was reached")

    monkeypatch.setattr(load, "validate_tree", never)
    checked = check_description(attributes_on_one_element(1.0), Settings(), filename="f.xml")
    assert [str(p) for p in checked.problems] == [
        "f.xml:1:0: <node> has 100000 attributes, over the limit of 256 ([limits] max_attributes_per_element)"]


def test_the_attribute_caps_are_settings():
    source = f'<workflow xmlns="{NS}" name="f">\n<node id="a" priority="1">{P}</node>\n</workflow>'.encode()
    assert problems(source, with_limits(max_attributes_per_element=1)) == [
        "bad.xml:2:0: <node> has 2 attributes, over the limit of 1 ([limits] max_attributes_per_element)"]
    # name, id, priority, type: the fourth passes a total of three, on <payload>
    assert problems(source, with_limits(max_attributes=3)) == [
        "bad.xml:2:0: the document has more than 3 attributes, over the limit ([limits] max_attributes); "
        "the limit was passed at <payload>"]
    assert problems(source, with_limits(max_attributes=4, max_attributes_per_element=2)) == []


def test_attribute_flood_is_the_check_the_soap_edge_calls_on_any_tree():
    envelope = ('<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>\n<op '
                + " ".join(f'a{i}="1"' for i in range(300)) + "/><!-- a comment --></e:Body></e:Envelope>")
    root = etree.fromstring(envelope.encode())
    assert xmlsafe.attribute_flood(root, Settings().limits) == (
        2, "<op> has 300 attributes, over the limit of 256 ([limits] max_attributes_per_element)")
    assert xmlsafe.attribute_flood(root, with_limits(max_attributes_per_element=300).limits) is None


def test_a_text_just_over_the_limit_is_still_found_among_many_attributes():
    # the size scan does not ask lxml for attribute values element by element any more: check it still finds them
    long = "v" * (1024**2 + 1)
    attrs = " ".join(f'a{i}="1"' for i in range(200))
    source = f'<workflow xmlns="{NS}" name="f">\n<node id="a" {attrs}>{P}</node>\n<node id="b" x="{long}">{P}</node></workflow>'
    assert problems(source.encode()) == [
        "bad.xml:3:0: attribute 'x' of <node> is 1048577 bytes, over the limit of 1048576 bytes "
        "([limits] max_text_bytes)"]


@pytest.mark.slow
def test_100000_invalid_nodes_give_the_first_100_problems_and_only_those_are_located(monkeypatch):
    kept = []
    prune = schema._prune
    monkeypatch.setattr(schema, "_prune", lambda root, keep: (kept.append(keep), prune(root, keep)))
    found = problems(invalid_values_side_by_side(1.0))
    assert len(found) == schema.MAX_PROBLEMS + 1
    assert found[0] == ("bad.xml:1:0: node 'n0': <payload> attribute 'type': the value 'perl' is not one of "
                        "'sh', 'bash', 'python', 'csh'")
    assert found[99].startswith("bad.xml:1:0: node 'n99': ")
    assert found[-1] == "bad.xml:1:0: schema validation stopped after 100 problems"
    # the tree validator (which locates every error it meets) saw a few chunks' worth, not 200,000 elements
    assert len(kept) == 1 and kept[0] < 2_000


def _nodes(count: int, bad: set[int]) -> bytes:
    nodes = "".join(f'<node id="n{i}"><payload type="{"perl" if i in bad else "sh"}">x</payload></node>'
                    for i in range(count))
    return f'<workflow xmlns="{NS}" name="f">{nodes}</workflow>'.encode()


@pytest.mark.slow
def test_problems_after_a_long_valid_start_are_located_exactly():
    found = problems(_nodes(100_000, set(range(50_000, 100_000))))
    assert found[0].startswith("bad.xml:1:0: node 'n50000': <payload> attribute 'type'")
    assert found[99].startswith("bad.xml:1:0: node 'n50099': ")
    assert found[-1] == "bad.xml:1:0: schema validation stopped after 100 problems"


def test_a_large_document_with_a_few_problems_reports_each_of_them():
    found = problems(_nodes(30_000, {5, 29_999}))
    assert [p.split(": <")[0] for p in found] == ["bad.xml:1:0: node 'n5'", "bad.xml:1:0: node 'n29999'"]


def test_a_large_valid_document_is_valid():
    assert problems(_nodes(30_000, set())) == []
