"""The one-way path through the code, checked: no module imports a layer above its own, and no import loops.

The order of the layers is written once, in README.md ("How it is built", the block after "Layers, lowest
first"): this test reads it from there, so the README is the single source of truth. Each line names a
package or a top-level module of ``broker`` (``broker`` itself: its ``__init__``), or a module of a package
that sits lower than the rest of its package (``events.types``). A module belongs to the longest name that
is its own or one of its parents; it may import its own layer and the layers listed before it.

Every import counts: at module level, inside functions (the lazy ones) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BROKER = REPO / "broker"
MARKER = "Layers, lowest first"


def layer_order() -> list[str]:
    """The layer names of the README's list, lowest first."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(MARKER):]
    block = re.search(r"```\n(.*?)```", after, re.S)
    assert block is not None, f"README.md: no ``` block after {MARKER!r}"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def modules() -> dict[str, Path]:
    """Dotted name relative to ``broker`` ('' for the package itself) -> file, for every module."""
    found = {}
    for path in sorted(BROKER.rglob("*.py")):
        parts = list(path.relative_to(BROKER).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(module of ``broker`` imported, line) for every import statement in the file, wherever it is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["broker", *package.split(".")] if package else ["broker"]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from broker.x import y": y is a module when there is one, else a name in broker.x
            targets = [f"{module}.{alias.name}" for alias in node.names]
            targets = [t if t.removeprefix("broker").lstrip(".") in known else module for t in targets]
        else:
            continue
        for target in targets:
            if target == "broker" or target.startswith("broker."):
                yield target.removeprefix("broker").lstrip("."), node.lineno


def layer_of(name: str, order: list[str]) -> str | None:
    """The longest layer name that is ``name`` or one of its parents ('broker' is the package's __init__)."""
    if name == "":
        return "broker" if "broker" in order else None
    parts = name.split(".")
    for size in range(len(parts), 0, -1):
        if ".".join(parts[:size]) in order:
            return ".".join(parts[:size])
    return None


def test_every_package_and_top_level_module_is_in_the_readme_order():
    order = layer_order()
    assert len(order) == len(set(order)), f"a layer is named twice: {order}"
    known = modules()
    missing = sorted(name or "broker" for name in known if layer_of(name, order) is None)
    assert not missing, f"README.md ({MARKER}) does not place: {', '.join(missing)}"
    stale = sorted(layer for layer in order if layer != "broker" and not any(
        name == layer or name.startswith(layer + ".") for name in known))
    assert not stale, f"README.md ({MARKER}) names what broker/ does not have: {', '.join(stale)}"


def test_no_module_imports_a_layer_above_its_own():
    order = layer_order()
    rank = {layer: i for i, layer in enumerate(order)}
    known = modules()
    upward = []
    for name, path in known.items():
        mine = layer_of(name, order)
        for target, line in imported(name, path, known):
            theirs = layer_of(target, order)
            if mine is not None and theirs is not None and rank[theirs] > rank[mine]:
                upward.append(f"{path.relative_to(REPO)}:{line} ({mine}) imports broker.{target} ({theirs})")
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(set(upward)))


@pytest.mark.slow
def test_no_two_modules_import_each_other():
    # a loop is held together only by the lazy import on one side: each side should be one module, or the
    # shared part a third below both
    known = modules()
    edges = {(name, target) for name, path in known.items() for target, _ in imported(name, path, known)
             if target in known and target != name}
    loops = sorted(f"broker.{a} <-> broker.{b}" for a, b in edges if (b, a) in edges and a < b)
    assert not loops, "modules that import each other:\n" + "\n".join(loops)

