"""A real engine (writer, controllers, workers, local launcher) on a fresh database of each backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.helpers import Broker


@pytest.fixture
def broker(migrated_url: str, tmp_path: Path) -> Iterator[Broker]:
    """A running engine on a fresh database (SQLite and PostgreSQL) with a private work directory."""
    b = Broker(migrated_url, tmp_path).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def make_broker(migrated_url: str, tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Build brokers with other engine settings (started by the test); all stopped at the end."""
    made: list[Broker] = []

    def make(**engine_settings: Any) -> Broker:
        b = Broker(migrated_url, tmp_path, **engine_settings)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()
