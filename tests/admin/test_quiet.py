"""``broker admin archive`` at the default log level: its own lines on stdout, no log line repeating them and no
paramiko chatter over sftp (the CLI's logging set-up, as a new user meets it)."""

from __future__ import annotations

import pwd
import shutil
import uuid
from pathlib import Path

import pytest

from tests.admin.helpers import example, run_workflows
from tests.admin.helpers import catalogue

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def test_archiving_prints_its_lines_once_and_logs_nothing_at_the_default_level(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    done = cli.archive()
    assert done.returncode == 0, done.stderr
    assert f"archived {made.gids['hello']}\n" in done.stdout
    assert done.stderr == ""


def test_archiving_over_sftp_logs_no_paramiko_lines(sqlite_admin_cli, sshd, tmp_path):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"failing": (example("failing.xml"), "alice")})
    directory = f"archives-{uuid.uuid4().hex[:8]}"
    env = {"BROKER_HOSTS_CATALOGUE": str(catalogue(tmp_path, sshd)),
           "BROKER_ARCHIVE_REMOTE_ROOTS": "sftp://archive/~/"}
    try:
        done = cli.archive(to=f"sftp://archive/~/{directory}", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"archived {made.gids['failing']}\n" in done.stdout
        assert done.stderr == ""
    finally:
        shutil.rmtree(Path(pwd.getpwnam(sshd.user).pw_dir) / directory, ignore_errors=True)
