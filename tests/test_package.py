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


#: lines a module may have; the elf, the resident agent and the host agent are shipped alone to compute hosts
#: (each runs there as one file, without the broker package), so each is one file whatever its size
MAX_MODULE_LINES = 400
SHIPPED_ALONE = {"elf/elf.py", "elf/agent.py", "launchers/hostagent.py"}


def test_no_module_is_over_400_lines_except_the_programs_shipped_alone():
    root = Path(broker.__file__).parent
    sizes = {str(p.relative_to(root)): len(p.read_text(encoding="utf-8").splitlines()) for p in root.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES and name not in SHIPPED_ALONE} == {}
