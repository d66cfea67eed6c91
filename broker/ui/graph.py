"""The layered drawing of a workflow's top-level nodes: each node one layer below its deepest parent.

Pure: boxes in, coordinates out. Within a layer the nodes follow the mean position of their parents (one
barycentre pass: few crossings at no cost); a layer wider than :data:`PER_ROW` boxes wraps onto more rows,
so that a flat workflow of two thousand nodes stays a page to scroll, not a line 300,000 pixels long.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: a box's size and the gaps between boxes, in SVG pixels
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN = 180, 54, 24, 44, 12
#: most boxes on one row of a layer
PER_ROW = 12


@dataclass(frozen=True, slots=True)
class Box:
    id: int
    layer: int
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Line:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Layout:
    boxes: dict[int, Box]
    lines: list[Line]
    width: int
    height: int


def layers(ids: Sequence[int], edges: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Node id -> its layer (0 for a node without drawn parents), by longest path; ids in creation order."""
    known = set(ids)
    parents: dict[int, list[int]] = {i: [] for i in ids}
    for parent, child in edges:
        if parent in known and child in known:
            parents[child].append(parent)
    layer: dict[int, int] = {}
    for start in ids:  # iterative depth-first: a deep chain must not hit the recursion limit
        stack = [start]
        while stack:
            current = stack[-1]
            if current in layer:
                stack.pop()
                continue
            todo = [p for p in parents[current] if p not in layer]
            if todo and len(stack) <= len(ids):  # the bound: a cycle (never stored) cannot loop for ever
                stack.extend(todo)
                continue
            layer[current] = 1 + max((layer.get(p, -1) for p in parents[current]), default=-1)
            stack.pop()
    return layer


def layout(ids: Sequence[int], edges: Sequence[tuple[int, int]]) -> Layout:
    """Where each box goes, and the lines from each parent's bottom to its child's top."""
    layer = layers(ids, edges)
    parents: dict[int, list[int]] = {}
    for parent, child in edges:
        if parent in layer and child in layer:
            parents.setdefault(child, []).append(parent)
    by_layer: dict[int, list[int]] = {}
    for node_id in ids:
        by_layer.setdefault(layer[node_id], []).append(node_id)
    position: dict[int, float] = {}
    boxes: dict[int, Box] = {}
    y = MARGIN
    widest = 0
    for depth in sorted(by_layer):
        members = by_layer[depth]
        if depth:
            members.sort(key=lambda n: sum(position[p] for p in parents.get(n, [])) / len(parents[n])
                         if parents.get(n) else float(len(position)))
        for index, node_id in enumerate(members):
            row, column = divmod(index, PER_ROW)
            position[node_id] = column
            boxes[node_id] = Box(node_id, depth, MARGIN + column * (BOX_W + GAP_X), y + row * (BOX_H + GAP_Y))
        rows = (len(members) + PER_ROW - 1) // PER_ROW
        widest = max(widest, min(len(members), PER_ROW))
        y += rows * (BOX_H + GAP_Y)
    lines = [Line(boxes[p].x + BOX_W // 2, boxes[p].y + BOX_H, boxes[c].x + BOX_W // 2, boxes[c].y)
             for p, c in edges if p in boxes and c in boxes]
    return Layout(boxes, lines, 2 * MARGIN + widest * (BOX_W + GAP_X) - GAP_X if widest else 2 * MARGIN,
                  y - GAP_Y + MARGIN if boxes else 2 * MARGIN)
