"""The ``crashes`` fixture: the crash workflow ready to run on a fresh database of each backend.

The harness (the workflow, ``broker run`` killed and run again) is in ``tests/crash/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import Cli
from tests.crash.helpers import Crashes


@pytest.fixture
def crashes(migrated_url: str, tmp_path: Path) -> Iterator[Crashes]:
    """The test workflow ready to run on a fresh database of each backend (SQLite, PostgreSQL)."""
    cli = Cli(migrated_url, tmp_path)
    runs = Crashes(cli)
    try:
        yield runs
    finally:
        runs.close()
        cli.close()
