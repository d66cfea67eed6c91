"""The package docstring is the map of the code: it names every subpackage there is, and none that is not."""

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
