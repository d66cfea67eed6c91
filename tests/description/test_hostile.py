"""Hostile descriptions: each is rejected with a located problem, fast, in bounded memory, without reading a
local file or opening a network connection."""

from __future__ import annotations

import resource
import select
import socket
import subprocess
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from broker.config import Settings
from broker.description.load import check_description
from tests.description.helpers import BROKER, NS, REPO

#: seconds a hostile document may take to be rejected
TIME_BOUND = 1.0
#: bytes of Python allocations (tracemalloc peak) one rejection may make, besides the input itself
PY_MEMORY_BOUND = 32 * 1024**2
#: growth of the process's peak resident set one rejection may cause (libxml2 included)
RSS_BOUND = 128 * 1024**2


@dataclass
class Listener:
    """A plain TCP listener on 127.0.0.1 that counts every connection made to it."""

    sock: socket.socket
    port: int
    connections: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def serve(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if ready:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()

    def close(self) -> int:
        """Stop serving and return the final count, including connections still in the accept backlog."""
        if self.stop.is_set():
            return self.connections
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        self.sock.setblocking(False)
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                break
            self.connections += 1
            conn.close()
        self.sock.close()
        return self.connections


@pytest.fixture
def listener() -> Iterator[Listener]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    listening = Listener(sock=sock, port=sock.getsockname()[1])
    listening.thread = threading.Thread(target=listening.serve, name="hostile-listener")
    listening.thread.start()
    yield listening
    listening.close()


@pytest.fixture
def canary(tmp_path):
    """A local file holding a unique secret that must never show up in any output."""
    secret = f"CANARY-{uuid.uuid4().hex}"
    path = tmp_path / "canary.txt"
    path.write_text(secret + "\n")
    return path, secret


def _wrap(prolog: str, body: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{prolog}\n<workflow xmlns="{NS}" name="h">\n'
            f'  <description>{body}</description>\n'
            f'  <node id="a"><payload type="sh">echo</payload></node>\n</workflow>\n').encode()


def billion_laughs() -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">' for i in range(1, 10)]
    return _wrap("<!DOCTYPE workflow [\n" + "\n".join(entities) + "\n]>", "&lol9;")


def quadratic_blowup() -> bytes:
    return _wrap(f'<!DOCTYPE workflow [<!ENTITY big "{"x" * 100_000}">]>', "&big;" * 10_000)


def deep_nesting() -> bytes:
    return (f'<workflow xmlns="{NS}" name="deep">' + "<description>" * 10_000 + "x"
            + "</description>" * 10_000 + "</workflow>").encode()


def _rejected(source: bytes, settings: Settings | None = None) -> tuple[list[str], float]:
    """Check a document, measuring time and memory; return the problems and the seconds taken."""
    settings = settings or Settings()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    started = time.perf_counter()
    try:
        checked = check_description(source, settings, filename="hostile.xml")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert checked.spec is None and checked.problems, "a hostile document was accepted"
    for problem in checked.problems:
        assert problem.line >= 1 and problem.column >= 0, f"problem without a location: {problem!r}"
    assert elapsed < TIME_BOUND, f"rejection took {elapsed:.2f} s"
    assert peak < PY_MEMORY_BOUND, f"rejection allocated {peak} bytes in Python"
    assert rss_growth < RSS_BOUND, f"peak resident set grew by {rss_growth} bytes"
    return [str(p) for p in checked.problems], elapsed


DOCTYPE_REJECTED = "DOCTYPE is not allowed (no DTDs, no entity declarations)"


def hostile_cases(canary_path, listener_port) -> dict[str, tuple[Callable[[], bytes], str]]:
    """name -> (document maker, the exact first problem)."""
    url = f"http://127.0.0.1:{listener_port}"
    canary_url = canary_path.as_uri()
    xi = 'xmlns:xi="http://www.w3.org/2001/XInclude"'
    return {
        "billion laughs": (billion_laughs, f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "quadratic blowup": (quadratic_blowup, f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "external entity to a file": (
            lambda: _wrap(f'<!DOCTYPE workflow [<!ENTITY x SYSTEM "{canary_url}">]>', "&x;"),
            f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "external entity to the network": (
            lambda: _wrap(f'<!DOCTYPE workflow [<!ENTITY x SYSTEM "{url}/entity">]>', "&x;"),
            f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "external DTD": (
            lambda: _wrap(f'<!DOCTYPE workflow SYSTEM "{url}/workflow.dtd">'),
            f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "parameter entities": (
            lambda: _wrap(f'<!DOCTYPE workflow [\n<!ENTITY % remote SYSTEM "{url}/p.dtd">\n%remote;\n'
                          f'<!ENTITY % file SYSTEM "{canary_url}">\n]>'),
            f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "doctype after comments and processing instructions": (
            lambda: _wrap(f'<!-- a comment -->\n<?pi data?>\n  <!DOCTYPE workflow SYSTEM "{url}/x.dtd">'),
            f"hostile.xml:4:3: {DOCTYPE_REJECTED}"),
        "XInclude of a file": (
            lambda: _wrap("", f'<xi:include {xi} href="{canary_url}" parse="text"/>'),
            "hostile.xml:4:0: XInclude is not supported (<include>)"),
        "XInclude from the network": (
            lambda: _wrap("", f'<xi:include {xi} href="{url}/x.xml"/>'),
            "hostile.xml:4:0: XInclude is not supported (<include>)"),
        "undefined entity reference": (
            lambda: _wrap("", "&secret;"),
            "hostile.xml:4:24: not well-formed XML: Entity 'secret' not defined"),
        "10,000 nesting levels": (
            deep_nesting, "hostile.xml:1:3391: elements nested deeper than 64 levels ([limits] max_xml_depth)"),
        "UTF-7 declared": (
            lambda: ('<?xml version="1.0" encoding="UTF-7"?>\n'
                     f'+ADw-!DOCTYPE workflow SYSTEM +ACI-{canary_url}+ACI-+AD4-\n'
                     f'<workflow xmlns="{NS}" name="u"/>').encode("ascii"),
            "hostile.xml:1:0: encoding 'UTF-7' is not allowed (use UTF-8 or UTF-16)"),
        "UTF-7 byte order mark": (
            lambda: b"+/v8-" + f'<workflow xmlns="{NS}" name="u"/>'.encode(),
            "hostile.xml:1:0: encoding UTF-7 is not allowed (use UTF-8 or UTF-16)"),
        "latin-1 declared": (
            lambda: ('<?xml version="1.0" encoding="ISO-8859-1"?>\n'
                     f'<workflow xmlns="{NS}" name="caf\xe9"/>').encode("latin-1"),
            "hostile.xml:1:0: encoding 'ISO-8859-1' is not allowed (use UTF-8 or UTF-16)"),
        "EBCDIC": (
            lambda: f'<?xml version="1.0" encoding="IBM037"?><workflow xmlns="{NS}" name="e"/>'.encode("cp037"),
            "hostile.xml:1:0: encoding EBCDIC is not allowed (use UTF-8 or UTF-16)"),
        "UTF-32": (
            lambda: f'<workflow xmlns="{NS}" name="e"/>'.encode("utf-32"),
            "hostile.xml:1:0: encoding UTF-32 is not allowed (use UTF-8 or UTF-16)"),
        "UTF-16 with a DOCTYPE": (
            lambda: ('<?xml version="1.0" encoding="UTF-16"?>\n'
                     f'<!DOCTYPE workflow SYSTEM "{url}/x.dtd">\n<workflow xmlns="{NS}" name="u"/>').encode("utf-16"),
            f"hostile.xml:2:1: {DOCTYPE_REJECTED}"),
        "UTF-8 bytes declared as UTF-16": (
            lambda: f'<?xml version="1.0" encoding="UTF-16"?><workflow xmlns="{NS}" name="u"/>'.encode(),
            "hostile.xml:1:0: encoding is declared as 'UTF-16' but the document is UTF-8 "
            "(no UTF-16 byte order mark)"),
    }


CASE_NAMES = list(hostile_cases(REPO, 0))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_document_is_rejected_quickly_without_reading_or_fetching_anything(case, canary, listener):
    canary_path, secret = canary
    make, expected = hostile_cases(canary_path, listener.port)[case]
    found, _ = _rejected(make())
    assert found[0] == expected
    assert not any(secret in p for p in found)
    assert listener.close() == 0


def test_an_attribute_over_max_text_bytes_is_rejected_before_the_schema_sees_it():
    size = 2 * 1024**2  # over the 1 MiB default, far below the 64 MiB document limit
    source = f'<workflow xmlns="{NS}" name="{"n" * size}">\n<node id="a"/>\n</workflow>'.encode()
    found, _ = _rejected(source)
    assert found == [f"hostile.xml:1:0: attribute 'name' of <workflow> is {size + 0} bytes, over the limit of "
                     "1048576 bytes ([limits] max_text_bytes)"]


def test_text_over_max_text_bytes_is_rejected():
    size = 1024**2 + 1
    source = (f'<workflow xmlns="{NS}" name="t">\n<node id="a"><payload type="sh"><![CDATA['
              + "y" * size + "]]></payload></node>\n</workflow>").encode()
    found, _ = _rejected(source)
    assert found == [f"hostile.xml:2:0: text of <payload> is {size} bytes, over the limit of 1048576 bytes "
                     "([limits] max_text_bytes)"]


def test_a_50_megabyte_attribute_stops_at_the_parser_limit():
    source = f'<workflow xmlns="{NS}" name="'.encode() + b"n" * (50 * 1024**2) + b'"/>'
    found, _ = _rejected(source)
    assert len(found) == 1
    assert found[0].startswith("hostile.xml:1:")
    assert found[0].endswith("text or attribute value over the limit of 1048576 bytes ([limits] max_text_bytes)")


def test_a_document_over_max_document_bytes_is_rejected_before_parsing(monkeypatch):
    from broker.description import xmlsafe

    steps: list[str] = []  # every step after the size check, recorded: none may run
    for name in ("_to_utf8", "_scan_prolog", "_parser"):
        monkeypatch.setattr(xmlsafe, name, lambda *args, _name=name, _real=getattr(xmlsafe, name):
                            steps.append(_name) or _real(*args))
    limit = Settings().limits.max_document_bytes
    source = _wrap("", "") + b" " * limit
    found, _ = _rejected(source)
    assert found == [f"hostile.xml:1:0: document is over the limit of {limit} bytes ([limits] max_document_bytes)"]
    assert steps == []  # nothing was decoded, scanned or parsed
    xmlsafe.parse_document(_wrap("", ""), Settings().limits)  # the recorder does see a document that fits
    assert steps == ["_to_utf8", "_scan_prolog", "_parser"]


def test_nesting_just_over_max_xml_depth_is_rejected_at_the_deep_element():
    levels = Settings().limits.max_xml_depth  # the root is level 1: this reaches level 65
    source = (f'<workflow xmlns="{NS}" name="d">\n' + "<description>\n" * levels + "x"
              + "</description>" * levels + "</workflow>").encode()
    found, _ = _rejected(source)
    assert found == ["hostile.xml:65:0: elements nested deeper than 64 levels ([limits] max_xml_depth)"]


def test_the_cli_rejects_an_external_entity_without_leaking_the_file(tmp_path, canary, listener):
    canary_path, secret = canary
    hostile = tmp_path / "hostile.xml"
    hostile.write_bytes(_wrap(
        f'<!DOCTYPE workflow [<!ENTITY x SYSTEM "{canary_path.as_uri()}">'
        f'<!ENTITY y SYSTEM "http://127.0.0.1:{listener.port}/y">]>', "&x;&y;"))
    result = subprocess.run([str(BROKER), "validate", str(hostile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"{hostile}:2:1: {DOCTYPE_REJECTED}\n"
    assert secret not in result.stdout + result.stderr
    assert listener.close() == 0


def test_the_cli_rejects_xinclude_and_billion_laughs_in_one_run(tmp_path, canary, listener):
    canary_path, secret = canary
    laughs, xinclude = tmp_path / "laughs.xml", tmp_path / "xinclude.xml"
    laughs.write_bytes(billion_laughs())
    xinclude.write_bytes(_wrap("", f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                                   f'href="{canary_path.as_uri()}" parse="text"/>'))
    result = subprocess.run([str(BROKER), "validate", str(laughs), str(xinclude)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{laughs}:2:1: {DOCTYPE_REJECTED}",
                                          f"{xinclude}:4:0: XInclude is not supported (<include>)"]
    assert secret not in result.stdout + result.stderr
    assert listener.close() == 0


def test_the_parser_alone_neither_reads_nor_fetches_and_the_tree_check_still_rejects_a_dtd(canary, listener):
    # Defence in depth: bypass the prolog scan and hand DOCTYPEs straight to the configured parser.
    from lxml import etree

    from broker.description import xmlsafe

    canary_path, secret = canary
    url = f"http://127.0.0.1:{listener.port}"
    documents = [
        _wrap(f'<!DOCTYPE workflow [<!ENTITY x SYSTEM "{canary_path.as_uri()}">]>', "&x;"),
        _wrap(f'<!DOCTYPE workflow [<!ENTITY x SYSTEM "{url}/e">]>', "&x;"),
        _wrap(f'<!DOCTYPE workflow SYSTEM "{canary_path.as_uri()}">'),
        _wrap(f'<!DOCTYPE workflow SYSTEM "{url}/w.dtd">'),
        _wrap(f'<!DOCTYPE workflow [<!ENTITY % p SYSTEM "{url}/p.dtd"> %p;]>'),
        billion_laughs(),
        quadratic_blowup(),
    ]
    for source in documents:
        started = time.perf_counter()
        try:
            root = etree.fromstring(source, xmlsafe._parser())
        except etree.XMLSyntaxError as exc:
            assert secret not in str(exc)
        else:
            assert secret not in etree.tostring(root, encoding="unicode")
            problems = xmlsafe._check_tree(root, source, "f.xml", Settings().limits)
            assert [p.message for p in problems] == [DOCTYPE_REJECTED]
        assert time.perf_counter() - started < TIME_BOUND
    assert listener.close() == 0
