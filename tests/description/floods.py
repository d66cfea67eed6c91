"""The hostile corpus of floods (issue 12, section 3): documents that are cheap to send and were expensive to
answer. Shared by tests/description/test_floods.py (each one is refused or validated, with the message
named here, in bounded memory) and tests/perf/bench_floods.py (which prints how long ``broker validate``
takes on each).

Each maker takes a scale (1.0: the issue's sizes) so that the benchmark's ``--tiny`` run stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

NS = "urn:workflow-broker:workflow:1.0"
P = '<payload type="sh">true</payload>'


@dataclass(frozen=True)
class Flood:
    name: str
    #: scale -> the document's bytes
    make: Callable[[float], bytes]
    #: text every answer to the full-size document contains (None: the document is valid)
    expected: str | None


def _n(count: int, scale: float) -> int:
    return max(1, int(count * scale))


def attributes_on_one_element(scale: float) -> bytes:
    attrs = " ".join(f'a{i}="1"' for i in range(_n(100_000, scale) - 1))  # and id
    return f'<workflow xmlns="{NS}" name="f"><node id="a" {attrs}>{P}</node></workflow>'.encode()


def attributes_one_per_node(scale: float) -> bytes:
    nodes = "".join(f'<node id="n{i}" x{i}="1">{P}</node>' for i in range(_n(100_000, scale)))
    return f'<workflow xmlns="{NS}" name="f">{nodes}</workflow>'.encode()


def attributes_over_the_total(scale: float) -> bytes:
    # 255 attributes per element, just under the per-element cap: 4,000 elements pass the total of 1,000,000
    attrs = " ".join(f'a{i}="1"' for i in range(255))
    nodes = "".join(f'<node id="n{i}" {attrs}>{P}</node>' for i in range(_n(4_000, scale)))
    return f'<workflow xmlns="{NS}" name="f">{nodes}</workflow>'.encode()


def invalid_values_side_by_side(scale: float) -> bytes:
    nodes = "".join(f'<node id="n{i}"><payload type="perl">true</payload></node>' for i in range(_n(100_000, scale)))
    return f'<workflow xmlns="{NS}" name="f">{nodes}</workflow>'.encode()


def children_of_one_node(scale: float) -> bytes:
    return f'<workflow xmlns="{NS}" name="f"><node id="a">{P}{"<x/>" * _n(200_000, scale)}</node></workflow>'.encode()


def values_of_one_parameter(scale: float) -> bytes:
    values = "".join(f"<value>{i}</value>" for i in range(_n(200_000, scale)))
    return (f'<workflow xmlns="{NS}" name="f"><sweep id="s"><param name="p">{values}</param>'
            f'<body><node id="a">{P}</node></body></sweep></workflow>').encode()


def text_of_20_megabytes(scale: float) -> bytes:
    return (f'<workflow xmlns="{NS}" name="f"><node id="a"><payload type="sh">'.encode()
            + b"x" * _n(20_000_000, scale) + b"</payload></node></workflow>")


def nesting_100000_deep(scale: float) -> bytes:
    depth = _n(100_000, scale)
    return (f'<workflow xmlns="{NS}" name="f">' + "<description>" * depth + "</description>" * depth
            + f'<node id="a">{P}</node></workflow>').encode()


CORPUS: tuple[Flood, ...] = (
    Flood("100,000 attributes on one element", attributes_on_one_element,
          "<node> has 100000 attributes, over the limit of 256 ([limits] max_attributes_per_element)"),
    Flood("100,000 nodes with one unknown attribute each", attributes_one_per_node,
          "schema validation stopped after 100 problems"),
    Flood("1,020,000 attributes, 255 per element", attributes_over_the_total,
          "the document has more than 1000000 attributes, over the limit ([limits] max_attributes)"),
    Flood("100,000 nodes with an invalid payload type", invalid_values_side_by_side,
          "schema validation stopped after 100 problems"),
    Flood("one node with 200,000 unknown children", children_of_one_node,
          "node 'a': <x>: element not allowed here"),
    Flood("one parameter with 200,000 values (valid)", values_of_one_parameter, None),
    Flood("a 20 MB text", text_of_20_megabytes,
          "over the limit of 1048576 bytes ([limits] max_text_bytes)"),
    Flood("100,000-deep nesting", nesting_100000_deep, "elements nested deeper than 64 levels"),
)
