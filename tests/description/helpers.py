"""Helpers shared by the description tests: documents from text, problems as strings, the `broker` command."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from broker.config import Settings
from broker.description.load import check_description

NS = "urn:workflow-broker:workflow:1.0"
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "conf" / "examples"
BROKER = REPO / ".venv" / "bin" / "broker"


def doc(text: str) -> bytes:
    """A document from indented test text: dedented, with the first line kept as line 1."""
    return textwrap.dedent(text).lstrip("\n").encode("utf-8")


def workflow(body: str, attrs: str = "") -> bytes:
    """A workflow whose root element is on line 1 and whose ``body`` starts on line 2."""
    return doc(f'<workflow xmlns="{NS}" name="t"{attrs}>\n' + textwrap.dedent(body).strip("\n") + "\n</workflow>\n")


def problems(source: bytes, settings: Settings | None = None, filename: str = "bad.xml") -> list[str]:
    """Every problem of a description, as ``FILE:LINE:COL: message`` strings."""
    checked = check_description(source, settings or Settings(), filename=filename)
    return [str(p) for p in checked.problems]


def with_include_dirs(*dirs: Path, settings: Settings | None = None) -> Settings:
    return (settings or Settings()).replace("description", include_dirs=tuple(str(d) for d in dirs))


def with_limits(settings: Settings | None = None, **limits) -> Settings:
    return (settings or Settings()).replace("limits", **limits)


def broker(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None):
    """``broker ARGS`` run as a process, without the BROKER_* settings of the test run (BROKER_TEST_* kept)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_") or k.startswith("BROKER_TEST_")}
    return subprocess.run([str(BROKER), *args], input=stdin, capture_output=True, timeout=60,
                          env={**clean, **(env or {})})
