"""The ``crashes`` fixture: the crash workflow ready to run on a fresh database of each backend.

The harness (the workflow, ``broker run`` killed and run again) is in ``tests/crash/helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import Cli
from tests.crash.helpers import Crashes


@pytest.fixture(params=["wrapper", "agent"])
def crashes(migrated_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Crashes]:
    """The test workflow ready to run on a fresh database of each backend (SQLite, PostgreSQL), its local
    payloads under a wb-run.sh wrapper each, or under the resident agent (``[hosts] local_agent``)."""
    cli = Cli(migrated_url, tmp_path)
    if request.param == "agent":
        cli.env["BROKER_HOSTS_LOCAL_AGENT"] = "true"
    runs = Crashes(cli)
    try:
        yield runs
        if request.param == "agent":
            assert (cli.workdir / ".agents").is_dir(), "the runs did not use the resident agent"
    finally:
        runs.close()
        cli.close()
