"""The ``server`` fixture: one real ``broker serve`` per test module (the harness: ``tests/api/helpers.py``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import Server, add_users


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Server]:
    """A server on its own SQLite database with the test users (alice, bob, root) and a 7-event page."""
    tmp = tmp_path_factory.mktemp("client-serve")
    shutil.copy(sqlite_template, tmp / "broker.db")
    url = f"sqlite:///{tmp / 'broker.db'}"
    add_users(url)
    srv = Server(url, tmp).start()
    try:
        yield srv
    finally:
        srv.stop(expect=None)
        srv.close()
