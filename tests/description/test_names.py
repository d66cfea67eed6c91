"""Node ids are path-safe (issue 12, section 2): never '.' or '..', never starting with '.' or '-', because ids
become directory names and command arguments. The XSD refuses them, and so does the semantic check for a spec
built any other way."""

from __future__ import annotations

import pytest

from broker.config import Settings
from broker.description.build import build_spec
from broker.description.checks import check_spec
from broker.description.xmlsafe import parse_document
from tests.description.helpers import NS, problems, workflow
from tests.description.helpers import broker

P = '<payload type="sh">echo</payload>'
MEANING = "is not a node id (1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-')"


@pytest.mark.parametrize("node_id", [".", "..", "-rf", "--help", ".hidden", "-"])
def test_an_id_that_is_not_path_safe_is_refused_where_it_is_declared(node_id):
    assert problems(workflow(f'<node id="ok">{P}</node>\n<node id="{node_id}">{P}</node>')) == [
        f"bad.xml:3:0: node '{node_id}': <node> attribute 'id': '{node_id}' {MEANING}"]


def test_a_reference_to_an_unsafe_id_is_refused_too():
    found = problems(workflow(f'<node id="a"><dependsOn node=".."/>{P}</node>'))
    assert found == [f"bad.xml:2:0: node 'a': <dependsOn> attribute 'node': '..' {MEANING}"]


@pytest.mark.parametrize("node_id", ["step-1", "fit.v2", "_x", "a..b", "0", "x-"])
def test_dots_and_dashes_inside_an_id_are_still_fine(node_id):
    assert problems(workflow(f'<node id="{node_id}">{P}</node>')) == []


def test_broker_validate_exits_1_naming_the_file_line_and_id(tmp_path):
    bad = tmp_path / "dots.xml"
    bad.write_bytes(workflow(f'<sweep id="s"><param name="p"><value>1</value></param>\n'
                             f'<body><node id="..">{P}</node></body></sweep>'))
    result = broker("validate", str(bad))
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == f"{bad}:3:0: node 's/..': <node> attribute 'id': '..' {MEANING}\n"


def test_the_semantic_check_refuses_unsafe_ids_in_a_spec_built_without_the_schema():
    source = (f'<workflow xmlns="{NS}" name="t">\n<node id="..">{P}</node>\n'
              f'<sweep id="-s"><param name="p"><value>1</value></param>\n<body><node id=".">{P}</node></body></sweep>\n'
              "</workflow>").encode()
    spec, built = build_spec(parse_document(source, Settings().limits), Settings(), filename="f.xml")
    assert built == []
    safe = "(letters, digits, '_', '.', '-'; not '.' or '..', not starting with '.' or '-')"
    assert [str(p) for p in check_spec(spec, Settings(), filename="f.xml")] == [
        f"f.xml:2:0: node '..': id '..' is not path-safe {safe}",
        f"f.xml:3:0: sweep '-s': id '-s' is not path-safe {safe}",
        f"f.xml:4:0: node '-s/.': id '.' is not path-safe {safe}",
    ]
