"""What the hardened parser and the schema accept: encodings, entities, comments; the schema lookup."""

from __future__ import annotations

import random
import threading

import pytest

from broker.config import Settings
from broker.description import schema
from broker.description.load import (
    check_description, check_description_file, load_description, load_description_file, read_description_file,
)
from broker.description.xmlsafe import parse_document
from tests.description.helpers import EXAMPLES, NS, REPO, problems


def _doc(payload: str = "echo", decl: str = '<?xml version="1.0" encoding="UTF-8"?>\n') -> str:
    return (f'{decl}<workflow xmlns="{NS}" name="caf\u00e9 \u2713">\n'
            f'  <node id="a"><payload type="sh">{payload}</payload></node>\n</workflow>\n')


def test_utf8_with_and_without_a_byte_order_mark_is_accepted():
    for source in (_doc().encode(), b"\xef\xbb\xbf" + _doc().encode(), _doc(decl="").encode()):
        assert load_description(source, Settings()).name == "caf\u00e9 \u2713"


def test_utf16_in_both_byte_orders_is_accepted_with_the_same_lines():
    for codec in ("utf-16", "utf-16-le", "utf-16-be"):
        text = _doc(decl='<?xml version="1.0" encoding="UTF-16"?>\n')
        source = text.encode(codec)
        if codec != "utf-16":  # no byte order mark: recognised by the first bytes
            assert not source.startswith((b"\xff\xfe", b"\xfe\xff"))
        spec = load_description(source, Settings())
        assert spec.name == "caf\u00e9 \u2713"
        assert spec.nodes[0].line == 3


def test_declared_encoding_names_are_case_insensitive():
    assert load_description(_doc(decl='<?xml version="1.0" encoding="utf-8"?>\n').encode(), Settings())


def test_invalid_utf8_is_reported_at_its_line():
    source = _doc().encode().replace(b"echo", b"echo \xff")
    assert problems(source) == ["bad.xml:3:40: not well-formed XML: Invalid bytes in character encoding"]


def test_predefined_entities_and_character_references_are_expanded():
    spec = load_description(_doc("echo &lt;&amp;&gt;&quot;&apos; &#x41;&#66; &#x1F600;").encode(), Settings())
    assert spec.nodes[0].payload.text == "echo <&>\"' AB \U0001F600\n"


def test_comments_and_processing_instructions_never_split_a_payload():
    spec = load_description(_doc("echo <!-- note -->one<?pi x?> two").encode(), Settings())
    assert spec.nodes[0].payload.text == "echo one two\n"


def test_cdata_is_plain_text():
    spec = load_description(_doc("<![CDATA[echo '<b>' && true]]>").encode(), Settings())
    assert spec.nodes[0].payload.text == "echo '<b>' && true\n"


def test_the_tree_keeps_line_numbers():
    tree = parse_document(_doc().encode(), Settings().limits)
    assert [el.sourceline for el in tree.getroot().iter()] == [2, 3, 3]


def test_the_schema_is_found_in_the_repository_and_compiled_once():
    assert schema.schema_path() == REPO / "schemas" / "workflow.xsd"
    assert schema.workflow_schema() is schema.workflow_schema()


def test_the_schema_validates_from_several_threads_without_mixing_errors():
    good = parse_document(_doc().encode(), Settings().limits)
    bad = parse_document(_doc().replace('type="sh"', 'type="perl"').encode(), Settings().limits)
    results: dict[int, list] = {}

    def work(i: int) -> None:
        results[i] = [len(schema.validate_tree(good if i % 2 else bad)) for _ in range(200)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {0: [1] * 200, 1: [0] * 200, 2: [1] * 200, 3: [0] * 200}


def test_a_smaller_max_text_bytes_applies_to_payloads():
    settings = Settings().replace("limits", max_text_bytes=10)
    source = _doc("echo 0123456789").encode()
    assert problems(source, settings) == [
        "bad.xml:3:0: text of <payload> is 15 bytes, over the limit of 10 bytes ([limits] max_text_bytes)",
    ]


def test_an_oversized_file_is_read_only_up_to_the_limit_and_rejected(tmp_path):
    big = tmp_path / "big.xml"
    with open(big, "wb") as fh:
        fh.write(_doc().encode())
        fh.truncate(1024**3)  # sparse: 1 GiB that must never be read
    settings = Settings().replace("limits", max_document_bytes=4096)
    assert len(read_description_file(big, settings)) == 4097
    checked = check_description_file(big, settings)
    assert [str(p) for p in checked.problems] == [
        f"{big}:1:0: document is over the limit of 4096 bytes ([limits] max_document_bytes)"]


def test_an_unreadable_file_raises_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_description_file(tmp_path / "missing.xml", Settings())
    with pytest.raises(IsADirectoryError):
        load_description_file(tmp_path, Settings())


def test_mangled_documents_are_rejected_with_problems_never_with_a_crash():
    # a seeded mutation fuzz over the examples: every outcome is a spec or located problems
    rng = random.Random(20240601)
    sources = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.xml"))]
    tokens = [b"<", b">", b'"', b"&", b"&amp;", b"<!DOCTYPE x>", b"-1", b"\xff", b"\x00", b"</node>",
              b'<node id="q">', b'step="0"', b"99999999999GiB", b"{{", b"{%", b"WB_", b"..", b"+5", b".5"]
    settings = Settings()
    for _ in range(400):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.4:
                del data[pos:pos + rng.randint(1, 20)]
            else:
                data[pos:pos + rng.randint(0, 6)] = rng.choice(tokens)
        checked = check_description(bytes(data), settings, filename="f.xml")
        assert (checked.spec is None) == bool(checked.problems)
        assert all(p.line >= 1 and p.column >= 0 and p.message for p in checked.problems)
