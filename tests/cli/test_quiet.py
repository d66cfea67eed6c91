"""No library chatter at the default log level: one line when the embedded database is created, nothing from
alembic on ``broker db check`` (PostgreSQL's "Detected sequence ... assuming SERIAL")."""

from __future__ import annotations

import pytest

from broker.persistence.schema_version import HEAD_REVISION
from tests.cli.helpers import EXAMPLES

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def test_the_first_run_says_once_that_it_created_the_database(fresh_cli):
    result = fresh_cli("run", str(EXAMPLES / "hello.xml"))
    assert result.returncode == 0, result.stderr
    logged = [line for line in result.stderr.splitlines() if not line.startswith("[")]  # not the progress lines
    assert logged == [f"INFO broker.persistence.db: created database {fresh_cli.url} (revision {HEAD_REVISION})"]
    again = fresh_cli("run", str(EXAMPLES / "hello.xml"))
    assert [line for line in again.stderr.splitlines() if not line.startswith("[")] == []


def test_db_check_prints_its_answer_and_no_library_lines(cli):
    result = cli("db", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no drift\n"
    assert result.stderr == ""
