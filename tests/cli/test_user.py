"""``broker user`` as a new user meets it: no terminal for the password, removing a user who owns workflows;
and the accounts table (``map``, ``unmap``, ``accounts``; tests/api/test_runas.py runs payloads through a row it
wrote)."""

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


def test_a_users_account_on_a_host_is_mapped_listed_and_unmapped_and_bad_values_are_refused(sqlite_cli):
    from broker.persistence.db import make_engine, session_factory
    from broker.resources.accounts import load_table

    def table():
        engine = make_engine(sqlite_cli.url)
        try:
            with session_factory(engine)() as s:
                return load_table(s)  # what a broker reads when it starts
        finally:
            engine.dispose()

    assert sqlite_cli("run", str(EXAMPLES / "hello.xml")).returncode == 0  # OWNER exists now
    mapped = sqlite_cli("user", "map", OWNER, "hpc1", "asmith", "--key", "/home/asmith/.ssh/id_ed25519")
    assert mapped.returncode == 0 and "a running broker reads the table when it starts" in mapped.stdout
    assert sqlite_cli("user", "map", OWNER, "localhost", "asmith").returncode == 0
    assert sqlite_cli("user", "map", OWNER, "localhost", "asmith2").returncode == 0  # replaces the row
    assert table() == {(OWNER, "hpc1"): ("asmith", "/home/asmith/.ssh/id_ed25519"),
                       (OWNER, "localhost"): ("asmith2", None)}
    assert [line.split() for line in sqlite_cli("user", "accounts").stdout.splitlines()] == [
        ["USER", "HOST", "ACCOUNT", "KEY"], [OWNER, "hpc1", "asmith", "/home/asmith/.ssh/id_ed25519"],
        [OWNER, "localhost", "asmith2"]]
    for args, problem in ((("nobody", "hpc1", "x"), "no user 'nobody'"),
                          ((OWNER, "bad host", "x"), "invalid host name 'bad host'"),
                          ((OWNER, "hpc1", "Root"), "invalid account name 'Root'"),
                          ((OWNER, "hpc1", "x", "--key", "id_rsa"), "invalid key path 'id_rsa'"),
                          ((OWNER, "hpc1", "x", "--key", "/k/../etc/shadow"), "invalid key path"),
                          ((OWNER, "hpc1", "x", "--key", "/k/$(reboot)"), "invalid key path")):
        refused = sqlite_cli("user", "map", *args)
        assert refused.returncode == 2 and refused.stderr.startswith(f"broker: {problem}"), refused.stderr
    assert sqlite_cli("user", "unmap", OWNER, "localhost").returncode == 0
    again = sqlite_cli("user", "unmap", OWNER, "localhost")
    assert again.returncode == 2 and "has no row in the accounts table for host localhost" in again.stderr
    assert table() == {(OWNER, "hpc1"): ("asmith", "/home/asmith/.ssh/id_ed25519")}
