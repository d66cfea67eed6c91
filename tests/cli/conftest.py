"""Fixtures: the real ``broker`` command against a fresh database of each backend, and payload clean-up
(the harness: ``tests/cli/helpers.py``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import Cli, alive


@pytest.fixture
def cli(migrated_url: str, tmp_path: Path) -> Iterator[Cli]:
    """The command line against a fresh migrated database of each backend."""
    runner = Cli(migrated_url, tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def sqlite_cli(sqlite_template: Path, tmp_path: Path) -> Iterator[Cli]:
    """The command line against a migrated SQLite file (for tests whose subject is not the database)."""
    import shutil

    shutil.copyfile(sqlite_template, tmp_path / "broker.db")
    runner = Cli(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def fresh_cli(tmp_path: Path) -> Iterator[Cli]:
    """The command line against a SQLite file that does not exist yet (the embedded default's first use)."""
    runner = Cli(f"sqlite:///{tmp_path / 'db' / 'broker.db'}", tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def payloads(tmp_path: Path) -> Iterator[list[int]]:
    """Pids of payloads a test started: any still alive at the end are killed with their process group."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
