"""sftp:// archive targets: a catalogue host reached through the SSH pool, as the operator's account there."""

from __future__ import annotations

import pwd
import shutil
import uuid
from pathlib import Path

import pytest

from broker.admin.reader import read_archive
from broker.admin.targets import FileTarget
from tests.admin.helpers import catalogue, example, run_workflows, workflow_rows

pytestmark = pytest.mark.slow  # every test here archives whole workflows, through `broker` commands


def test_archives_go_to_a_catalogue_host_over_sftp_and_read_back_from_there(sqlite_admin_cli, sshd, tmp_path):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"failing": (example("failing.xml"), "alice")})
    gid = made.gids["failing"]
    directory = f"archives-{uuid.uuid4().hex[:8]}"
    home = Path(pwd.getpwnam(sshd.user).pw_dir)
    env = {"BROKER_HOSTS_CATALOGUE": str(catalogue(tmp_path, sshd)),
           "BROKER_ARCHIVE_REMOTE_ROOTS": "sftp://archive/~/"}
    uri = f"sftp://archive/~/{directory}/2025"
    try:
        done = cli.archive(delete_after=True, to=uri, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        remote = home / directory / "2025"
        assert sorted(p.name for p in remote.iterdir()) == [f"{gid}.tar.gz", f"{gid}.xml"]
        assert {p.stat().st_uid for p in remote.iterdir()} == {pwd.getpwnam(sshd.user).pw_uid}
        archive = read_archive(FileTarget(remote), f"{gid}.xml")
        assert archive.fields["state"] == "failed" and archive.bundle is not None
        assert gid not in workflow_rows(cli.sessions)

        listing = cli("admin", "archive", "--list", uri, env=env)
        assert listing.returncode == 0 and gid in listing.stdout, listing.stderr
        shown = cli("admin", "archive", "--show", f"{uri}/{gid}.xml", "--file", "broken/1/stderr", env=env)
        assert shown.returncode == 0 and shown.stdout == "about to fail\n", shown.stderr
    finally:
        shutil.rmtree(home / directory, ignore_errors=True)


def test_an_sftp_target_outside_the_remote_roots_is_refused(sqlite_admin_cli, sshd, tmp_path):
    cli = sqlite_admin_cli
    run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    env = {"BROKER_HOSTS_CATALOGUE": str(catalogue(tmp_path, sshd)),
           "BROKER_ARCHIVE_REMOTE_ROOTS": "sftp://archive/~/allowed"}
    for uri in ("sftp://archive/~/other", "sftp://archive/tmp/x", "sftp://archive/~/allowed/../other"):
        done = cli.archive(to=uri, env=env)
        assert done.returncode == 2, (uri, done.stderr)
