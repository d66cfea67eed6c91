"""Accounts: which account and key a broker user's nodes run under on each host (table, then catalogue)."""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from broker.errors import ResourceError
from broker.persistence.models import Account as AccountRow, User
from broker.resources.accounts import Account, AccountMap, load_table, work_root
from broker.resources.catalogue import parse_catalogue


@pytest.fixture
def catalogue(tmp_path: Path):
    (tmp_path / "kh").write_text("")
    xml = """<hosts xmlns="urn:workflow-broker:hosts:1.0">
      <host name="laptop" launcher="local"/>
      <host name="hpc" launcher="slurm">
        <ssh address="login" knownHosts="kh"/>
        <scratch>/scratch</scratch>
        <account user="alice" login="asmith" key="keys/alice"/>
        <account user="*" login="{user}" key="/etc/keys/{user}"/>
      </host>
      <host name="lab" launcher="ssh">
        <ssh address="lab" knownHosts="kh"/>
        <scratch>work</scratch>
      </host>
    </hosts>"""
    return parse_catalogue(xml.encode(), filename="hosts.xml", base=tmp_path)


def test_a_named_account_beats_the_wildcard_and_user_is_substituted(catalogue, tmp_path):
    accounts = AccountMap(catalogue)
    assert accounts.account("alice", "hpc") == Account("hpc", "asmith", str(tmp_path / "keys" / "alice"))
    assert accounts.account("bob", "hpc") == Account("hpc", "bob", "/etc/keys/bob")
    assert accounts.account("bob", "hpc").label == "bob@hpc"


def test_the_accounts_table_beats_the_catalogue(catalogue):
    accounts = AccountMap(catalogue, {("alice", "hpc"): ("alice2", "/k/a2"), ("carol", "lab"): ("cjones", None)})
    assert accounts.account("alice", "hpc") == Account("hpc", "alice2", "/k/a2")
    assert accounts.account("carol", "lab") == Account("lab", "cjones", None)


def test_a_user_without_an_account_cannot_run_on_a_remote_host(catalogue):
    with pytest.raises(ResourceError) as caught:
        AccountMap(catalogue).account("dave", "lab")
    assert str(caught.value) == ("user 'dave' has no account on host 'lab' (add an <account> to hosts.xml, or a "
                                 "row to the accounts table)")
    assert caught.value.retryable is False


def test_an_invalid_account_name_from_the_table_is_refused(catalogue):
    with pytest.raises(ResourceError, match="'root; rm' is not a valid account name on host 'hpc'"):
        AccountMap(catalogue, {("alice", "hpc"): ("root; rm", None)}).account("alice", "hpc")
    with pytest.raises(ResourceError, match="'Not A User' is not a broker user name"):
        AccountMap(catalogue).account("Not A User", "hpc")


def test_a_local_host_runs_as_the_brokers_own_user(catalogue):
    account = AccountMap(catalogue).account("alice", "laptop")
    assert (account.login, account.key, account.local) == (getpass.getuser(), None, True)


def test_each_account_has_its_own_work_root_under_the_scratch_directory(catalogue):
    accounts = AccountMap(catalogue, {("carol", "lab"): ("cjones", None)})
    assert work_root(catalogue.get("hpc"), accounts.account("bob", "hpc")) == "/scratch/bob"
    assert work_root(catalogue.get("lab"), accounts.account("carol", "lab")) == "work/cjones"


def test_the_accounts_table_is_read_from_the_database(session, catalogue):
    alice = User(name="alice")
    session.add(alice)
    session.flush()
    session.add(AccountRow(user_id=alice.id, host="hpc", account="alice9", key_path="/k/alice9"))
    session.commit()
    table = load_table(session)
    assert table == {("alice", "hpc"): ("alice9", "/k/alice9")}
    assert AccountMap(catalogue, table).account("alice", "hpc").login == "alice9"
