"""``broker validate`` shows user text escaped (issue 12, section 6): a newline in a value cannot forge a line, and
bidi and zero-width characters never reach the terminal."""

from __future__ import annotations

from tests.description.helpers import workflow
from tests.description.helpers import broker

P = '<payload type="sh">echo</payload>'


def test_a_newline_in_an_id_cannot_forge_a_valid_line(tmp_path):
    forged = "hello.xml: valid (1 node definition, 0 sweeps: 1 node to run)"
    bad = tmp_path / "bad.xml"
    bad.write_bytes(workflow(f'<node id="x&#10;{forged}">{P}</node>'))
    result = broker("validate", str(bad))
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{bad}:2:0: node 'x\\nhello.xml: valid")
    assert not any(line.startswith("hello.xml") for line in lines)


def test_bidi_and_zero_width_characters_are_escaped_in_problems(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(workflow(f'<node id="txt.\u202eexe\u200b">{P}</node>'))
    result = broker("validate", str(bad))
    assert result.returncode == 1
    text = result.stderr.decode()
    assert "'txt.\\u202eexe\\u200b'" in text
    assert "\u202e" not in text and "\u200b" not in text


def test_a_file_name_is_shown_escaped_too(tmp_path):
    name = tmp_path / "two\nlines\u202e.xml"
    name.write_bytes(workflow(f'<node id="a">{P}</node>'))
    result = broker("validate", str(name))
    assert result.returncode == 0
    assert result.stdout.decode() == (f"{tmp_path}/two\\nlines\\u202e.xml: valid (1 node definition, 0 sweeps: "
                                      "1 node to run)\n")
