"""The ``server`` fixture: one real ``broker serve`` per test module (the harness: ``tests/api/helpers.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import Server, add_users


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    """One server per test module on its own SQLite database, with the test users."""
    tmp = tmp_path_factory.mktemp("serve")
    db = tmp / "broker.db"
    shutil.copy(sqlite_template, db)
    url = f"sqlite:///{db}"
    add_users(url)
    allowed = tmp / "allowed"
    allowed.mkdir()
    srv = Server(url, tmp, {"BROKER_API_WORKFLOW_URLS": allowed.as_uri() + "/"}).start()
    srv.allowed = allowed  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()
