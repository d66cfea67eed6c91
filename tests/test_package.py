"""The package docstring is the map of the code: it names every subpackage there is, and none that is not;
and the modules stay small enough to read."""

from __future__ import annotations

import re
from pathlib import Path

import broker


def test_the_package_docstring_names_exactly_the_subpackages():
    root = Path(broker.__file__).parent
    packages = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    named = set(re.findall(r"^    ([a-z_]+)/ ", broker.__doc__, re.M))
    assert named == packages
    for words in ("MOAB", "expand"):
        assert words in broker.__doc__


#: lines a module may have; the elf is shipped alone to compute hosts, so it is one file whatever its size
MAX_MODULE_LINES = 400


def test_no_module_is_over_400_lines_except_the_elf():
    root = Path(broker.__file__).parent
    sizes = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in root.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES and name != "elf/elf.py"} == {}
