"""Fixtures of the admin tests: the admin command line on a fresh database, a running engine beside it.

Their harness (workflows run to their end, snapshots of the database) is in ``tests/admin/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin.helpers import AdminCli
from tests.engine.helpers import Broker


@pytest.fixture
def admin_cli(migrated_url: str, tmp_path: Path) -> Iterator[AdminCli]:
    """The command line against a fresh migrated database of each backend."""
    runner = AdminCli(migrated_url, tmp_path)
    yield runner
    runner.close()


@pytest.fixture
def running_broker(migrated_url: str, tmp_path: Path) -> Iterator[Broker]:
    """A running engine on a fresh database of each backend (stopped at the end)."""
    broker = Broker(migrated_url, tmp_path).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def sqlite_admin_cli(sqlite_template: Path, tmp_path: Path) -> Iterator[AdminCli]:
    """The command line against a migrated SQLite file (for tests whose subject is not the database)."""
    import shutil

    shutil.copyfile(sqlite_template, tmp_path / "broker.db")
    runner = AdminCli(f"sqlite:///{tmp_path / 'broker.db'}", tmp_path)
    yield runner
    runner.close()
