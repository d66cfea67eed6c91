"""Running as an account of this machine (broker.runas): lookups, the work root check, directories and files
the broker makes for an account, and copies done as the account, on the real test accounts (as root)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from broker import runas, transfers
from broker.description.model import Stage
from broker.errors import ConfigError, ResourceError
from broker.launchers.workdir import write_new
from tests.fixtures.accounts import staging_share


def owner_and_mode(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_mode & 0o7777


def test_an_account_is_looked_up_with_its_groups_and_gets_a_clean_environment(test_accounts):
    first = test_accounts.first
    assert first.uid != 0 and first.gid in first.groups
    again = runas.lookup(first.login)
    assert again == first and runas.lookup(first.login) is again  # reused for a while
    assert first.environment() == {b"HOME": first.home.encode(), b"USER": first.login.encode(),
                                   b"LOGNAME": first.login.encode(), b"SHELL": first.shell.encode(),
                                   b"PATH": runas.PATH.encode(), b"LANG": runas.LANG.encode()}
    assert first.credentials() == {"user": first.uid, "group": first.gid, "extra_groups": list(first.groups),
                             "umask": 0o077}
    with pytest.raises(ResourceError, match="account 'no-such-account' does not exist on this machine") as caught:
        runas.lookup("no-such-account")
    assert caught.value.retryable is False


def test_an_environment_is_exported_quoted_and_a_bad_name_is_refused():
    assert runas.exports({b"A": b"it's $(x)\n", b"B_2": b""}) == b"export A='it'\\''s $(x)\n'\nexport B_2=''\n"
    with pytest.raises(ResourceError, match="environment variable name b'A;B' is not valid"):
        runas.exports({b"A;B": b"1"})


def test_a_work_root_other_accounts_cannot_traverse_is_refused_naming_the_setting(tmp_path, test_accounts):
    root = tmp_path / "work"  # pytest's directories are mode 0700, as is root's home
    root.mkdir(mode=0o700)
    with pytest.raises(ConfigError) as caught:
        runas.check_traversable(root)
    message = str(caught.value)
    assert message.startswith(f"the work root {root} cannot be traversed by the accounts local payloads run as (")
    assert "is mode 0700): set [engine] workdir to a directory every account can reach" in message


def test_a_traversable_work_root_is_accepted_and_made_passable_if_it_is_the_brokers(open_tmp, test_accounts):
    root = open_tmp / "work"
    root.mkdir(mode=0o700)
    runas.check_traversable(root)
    assert owner_and_mode(root) == (0, 0o711)


def test_an_attempt_directory_belongs_to_the_account_below_passable_directories_of_the_broker(open_tmp,
                                                                                               test_accounts):
    first = test_accounts.first
    workdir = open_tmp / "wf-1" / "sweep@2" / "step" / "1"
    runas.make_workdir(str(workdir), first)
    assert owner_and_mode(workdir) == (first.uid, 0o700)
    for parent in (open_tmp / "wf-1", open_tmp / "wf-1" / "sweep@2", workdir.parent):
        assert owner_and_mode(parent) == (0, 0o711)
    runas.make_workdir(str(workdir), first)  # again (stage-in made it first): unchanged
    assert owner_and_mode(workdir) == (first.uid, 0o700)
    sub = runas.make_subdirs(str(workdir), "a/b", first)
    assert sub == str(workdir / "a" / "b") and owner_and_mode(workdir / "a" / "b") == (first.uid, 0o700)


def test_a_broker_that_switches_no_accounts_keeps_every_directory_its_own_and_closed(tmp_path):
    workdir = tmp_path / "wf-1" / "step" / "1"
    runas.make_workdir(str(workdir), None)
    assert owner_and_mode(workdir)[1] == owner_and_mode(workdir.parent)[1] == 0o700


def test_another_accounts_directory_or_a_symlink_is_never_taken_over(open_tmp, test_accounts):
    first, second = test_accounts.first, test_accounts.second
    theirs = open_tmp / "wf" / "theirs"
    runas.make_workdir(str(theirs), second)
    with pytest.raises(ResourceError, match=f"belongs to uid {second.uid}, not to account '{first.login}'"):
        runas.make_workdir(str(theirs), first)
    assert owner_and_mode(theirs) == (second.uid, 0o700)
    target = open_tmp / "elsewhere"
    target.mkdir()
    (open_tmp / "wf" / "link").symlink_to(target)
    with pytest.raises(ResourceError, match="wf/link: Not a directory"):  # a link is not followed
        runas.make_workdir(str(open_tmp / "wf" / "link"), first)
    assert owner_and_mode(target)[0] == 0


def test_files_the_broker_writes_into_an_accounts_directory_never_follow_a_planted_link(open_tmp, test_accounts):
    victim = open_tmp / "victim"
    victim.write_text("root's\n")
    workdir = open_tmp / "wf" / "1"
    runas.make_workdir(str(workdir), test_accounts.first)
    for name in ("payload", "killed"):
        (workdir / name).symlink_to(victim)
    with pytest.raises(OSError):
        runas.write_owned(str(workdir / "payload"), b"rm -rf /\n", test_accounts.first)
    with pytest.raises(OSError):
        write_new(str(workdir / "killed"), b"cancelled\n")
    assert victim.read_text() == "root's\n" and owner_and_mode(victim)[0] == 0


# ------------------------------------------------------------------------------------------ copies as an account

def test_a_copy_as_an_account_reads_and_writes_only_what_the_account_may(open_tmp, test_accounts):
    first = test_accounts.first
    readable = open_tmp / "readable"
    readable.write_text("for everyone\n")
    readable.chmod(0o644)
    private = open_tmp / "private"
    private.write_text("root only\n")
    private.chmod(0o600)
    mine = open_tmp / "mine"
    runas.make_workdir(str(mine), first)
    assert runas.copy(first, str(readable), str(mine / "sub" / "copy"), 1024) == 13
    assert (mine / "sub" / "copy").read_text() == "for everyone\n"
    assert owner_and_mode(mine / "sub" / "copy") == (first.uid, 0o600)
    with pytest.raises(ResourceError) as caught:
        runas.copy(first, str(private), str(mine / "stolen"), 1024)
    assert str(caught.value) == f"cannot read {private}: Permission denied (as account '{first.login}')"
    assert caught.value.retryable is False
    with pytest.raises(ResourceError, match=f"cannot write {open_tmp}/planted: Permission denied"):
        runas.copy(first, str(readable), str(open_tmp / "planted"), 1024)  # a directory of root's
    assert not (mine / "stolen").exists() and not (open_tmp / "planted").exists()


def test_a_copy_with_a_wrong_checksum_or_over_the_limit_leaves_the_target_as_it_was(open_tmp, test_accounts):
    first = test_accounts.first
    mine = open_tmp / "mine"
    runas.make_workdir(str(mine), first)
    source = mine / "source"
    runas.copy(first, os.open(__file__, os.O_RDONLY), str(source), 10**6)
    (mine / "target").write_text("old\n")
    with pytest.raises(ResourceError, match="checksum mismatch for target: expected sha256:00") as caught:
        runas.copy(first, str(source), str(mine / "target"), 10**6, checksum="sha256:" + "0" * 64)
    assert caught.value.retryable is True
    with pytest.raises(ResourceError, match="over the staging limit of 10"):
        runas.copy(first, str(source), str(mine / "target"), 10)
    assert (mine / "target").read_text() == "old\n"
    assert sorted(p.name for p in mine.iterdir()) == ["source", "target"]  # no partial file left


# ---------------------------------------------------------------------------------------- staging as an account

def test_file_staging_of_a_local_node_reads_and_writes_as_its_owners_account(open_tmp, test_accounts):
    first, second = test_accounts.first, test_accounts.second
    share, own = staging_share(open_tmp, test_accounts.first, "first")
    roots = (str(share),)
    spool = open_tmp / "spool"
    for account, workdir in ((second, open_tmp / "w2"), (first, open_tmp / "w1")):
        runas.make_workdir(str(workdir), account)
        owner = transfers.Owner(account, True, spool)
        (workdir / "out.txt").write_bytes(b"written by the node\n")
        os.chown(workdir / "out.txt", account.uid, account.gid)
        if account is second:
            with pytest.raises(ResourceError, match=f"cannot read {own}/private.txt: Permission denied"):
                transfers.stage_in(Stage(f"file://{own}/private.txt", "in.txt"), workdir, roots, 1024, owner)
            with pytest.raises(ResourceError, match=f"cannot write {own}/result.txt: Permission denied"):
                transfers.stage_out(Stage("out.txt", f"file://{own}/result.txt"), workdir, roots, 1024, owner)
            assert (own / "result.txt").read_text() == "first's\n"
            assert not (workdir / "in.txt").exists()
        else:
            digest = hashlib.sha256(b"first's secret\n").hexdigest()
            transfers.stage_in(Stage(f"file://{own}/private.txt", "in.txt", f"sha256:{digest}"), workdir, roots,
                               1024, owner)
            assert (workdir / "in.txt").read_text() == "first's secret\n"
            assert owner_and_mode(workdir / "in.txt") == (first.uid, 0o600)
            transfers.stage_out(Stage("out.txt", f"file://{own}/result.txt"), workdir, roots, 1024, owner)
            assert (own / "result.txt").read_text() == "written by the node\n"
            assert owner_and_mode(own / "result.txt")[0] == first.uid


@pytest.mark.slow
def test_file_staging_of_a_remote_node_keeps_the_brokers_directory_and_uses_the_account_for_the_path(
        open_tmp, test_accounts):
    second = test_accounts.second
    share, own = staging_share(open_tmp, test_accounts.first, "first")
    workdir = open_tmp / "remote-node"
    runas.make_workdir(str(workdir), None)  # the broker's own: the node runs elsewhere
    (workdir / "fetched.txt").write_text("fetched from the host\n")
    owner = transfers.Owner(second, False, open_tmp / "spool")
    with pytest.raises(ResourceError, match="Permission denied"):
        transfers.stage_out(Stage("fetched.txt", f"file://{own}/result.txt"), workdir, (str(share),), 1024, owner)
    with pytest.raises(ResourceError, match="Permission denied"):
        transfers.stage_in(Stage(f"file://{own}/private.txt", "in.txt"), workdir, (str(share),), 1024, owner)
    assert (own / "result.txt").read_text() == "first's\n"
    assert not (workdir / "in.txt").exists() and not list(workdir.glob(".*partial"))
    theirs = share / "second"
    theirs.mkdir()
    os.chown(theirs, second.uid, second.gid)
    (share / "public.txt").write_text("for everyone\n")
    transfers.stage_in(Stage(f"file://{share}/public.txt", "in.txt"), workdir, (str(share),), 1024, owner)
    assert (workdir / "in.txt").read_text() == "for everyone\n" and owner_and_mode(workdir / "in.txt")[0] == 0
    transfers.stage_out(Stage("fetched.txt", f"file://{theirs}/result.txt"), workdir, (str(share),), 1024, owner)
    assert (theirs / "result.txt").read_text() == "fetched from the host\n"
    assert owner_and_mode(theirs / "result.txt")[0] == second.uid
