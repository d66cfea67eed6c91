"""``broker user`` as a new user meets it: no terminal for the password, removing a user who owns workflows."""

from __future__ import annotations

import subprocess

import pytest

from tests.cli.helpers import EXAMPLES, OWNER

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def test_adding_a_user_without_a_terminal_points_to_password_stdin(sqlite_cli):
    result = subprocess.run(sqlite_cli.args("user", "add", "carol"), stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, env=sqlite_cli.env, cwd=sqlite_cli.tmp, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "broker: no terminal to ask for the password on: give it on the first line of standard input with "
        "--password-stdin (broker user add carol --password-stdin)"]
    assert "Warning" not in result.stderr and "EOFError" not in result.stderr
    assert sqlite_cli("user", "list").stdout.splitlines()[1:] == []


def test_removing_a_user_who_owns_workflows_is_a_usage_error_saying_what_to_do(sqlite_cli):
    assert sqlite_cli("run", str(EXAMPLES / "hello.xml")).returncode == 0
    result = sqlite_cli("user", "remove", OWNER)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"broker: user {OWNER} owns 1 workflow: delete it first with `broker admin delete --user {OWNER}` "
        "(finished ones; cancel running ones first) or the API's deleteAllForUser, then remove the user; "
        "or keep the user"]
    assert [line.split()[0] for line in sqlite_cli("user", "list").stdout.splitlines()[1:]] == [OWNER]
