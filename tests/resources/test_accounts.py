"""Accounts: which account and key a broker user's nodes run under on each host (table, then catalogue)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from broker.errors import ResourceError
from broker.persistence.models import Account as AccountRow, User
from broker.resources.accounts import Account, AccountMap, load_table, work_root
from broker.resources.catalogue import builtin_catalogue, parse_catalogue


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


def test_a_local_host_maps_users_like_any_other_host(tmp_path):
    catalogue = parse_catalogue(b"""<hosts xmlns="urn:workflow-broker:hosts:1.0">
      <host name="laptop" launcher="local">
        <account user="alice" login="broker-test"/>
        <account user="*" login="{user}"/>
      </host>
      <host name="queue" launcher="slurm"><scratch>/s</scratch><account user="bob" login="bsmith"/></host>
    </hosts>""", filename="hosts.xml", base=tmp_path)
    accounts = AccountMap(catalogue, {("carol", "laptop"): ("broker-test2", "/ignored/key")})
    # a named entry, the wildcard ({user}: an account of the same name), the table (winning, without a key)
    assert accounts.account("alice", "laptop") == Account("laptop", "broker-test", None, local=True)
    assert accounts.account("dave", "laptop") == Account("laptop", "dave", None, local=True)
    assert accounts.account("carol", "laptop") == Account("laptop", "broker-test2", None, local=True)
    assert accounts.account("bob", "queue") == Account("queue", "bsmith", None, local=True)
    with pytest.raises(ResourceError) as caught:
        accounts.account("alice", "queue")
    assert str(caught.value) == ("user 'alice' has no account on host 'queue' (add an <account> to hosts.xml, or a "
                                 "row to the accounts table; or [engine] run_as_broker_account = true for a "
                                 "single-user broker)")
    assert caught.value.retryable is False


def test_the_builtin_local_host_takes_its_mapping_from_the_accounts_table():
    accounts = AccountMap(builtin_catalogue(), {("alice", "localhost"): ("broker-test", None)})
    assert accounts.account("alice", "localhost") == Account("localhost", "broker-test", None, local=True)
    with pytest.raises(ResourceError, match=r"user 'bob' has no account on host 'localhost' \(add an <account> "
                                            r"to a host catalogue \(\[hosts\] catalogue\), or a row to the "
                                            r"accounts table"):
        accounts.account("bob", "localhost")


def test_run_as_broker_account_maps_everyone_on_local_hosts_to_the_brokers_own_account(catalogue):
    accounts = AccountMap(catalogue, {("alice", "laptop"): ("broker-test", None)}, local_as_broker=True)
    own = pwd.getpwuid(os.geteuid()).pw_name
    for user in ("alice", "nobody-mapped"):
        account = accounts.account(user, "laptop")
        assert (account.login, account.key, account.local) == (own, None, True)
    assert accounts.account("bob", "hpc") == Account("hpc", "bob", "/etc/keys/bob")  # SSH hosts: unchanged


def test_each_account_has_its_own_work_root_under_the_scratch_directory(catalogue):
    accounts = AccountMap(catalogue, {("carol", "lab"): ("cjones", None)})
    assert work_root(catalogue.get("hpc"), accounts.account("bob", "hpc")) == "/scratch/bob"
    assert work_root(catalogue.get("lab"), accounts.account("carol", "lab")) == "work/cjones"


@pytest.mark.slow
def test_the_accounts_table_is_read_from_the_database(session, catalogue):
    alice = User(name="alice")
    session.add(alice)
    session.flush()
    session.add(AccountRow(user_id=alice.id, host="hpc", account="alice9", key_path="/k/alice9"))
    session.commit()
    table = load_table(session)
    assert table == {("alice", "hpc"): ("alice9", "/k/alice9")}
    assert AccountMap(catalogue, table).account("alice", "hpc").login == "alice9"


# ------------------------------------------------------------------- who local payloads start as (Resources)

LOCAL = b"""<hosts xmlns="urn:workflow-broker:hosts:1.0">
  <host name="here" launcher="local"><account user="alice" login="broker-test"/></host>
  <host name="lab" launcher="ssh"><ssh address="lab" knownHosts="kh"/><scratch>w</scratch>
    <account user="*" login="{user}"/></host>
</hosts>"""


def local_resources(tmp_path, run_as_broker_account: bool = False, xml: bytes = LOCAL):
    from broker.config import Settings
    from broker.resources import Resources

    (tmp_path / "kh").write_text("")
    settings = Settings().replace("engine", run_as_broker_account=run_as_broker_account)
    return Resources(settings, catalogue=parse_catalogue(xml, filename="hosts.xml", base=tmp_path),
                     accounts={("bob", "here"): ("broker-test2", None)})


def test_a_root_broker_starts_local_payloads_as_the_owners_mapped_account(tmp_path, test_accounts):
    resources = local_resources(tmp_path)
    try:
        assert resources.local_run_as("alice", "here") == test_accounts.first
        assert resources.local_run_as("bob", "here") == test_accounts.second
        assert resources.switches_accounts()
        with pytest.raises(ResourceError, match="user 'carol' has no account on host 'here'"):
            resources.local_run_as("carol", "here")
        # file:// staging of a node on an SSH host: the user's account on the catalogue's local host
        assert resources.staging_account("alice", "lab") == (test_accounts.first, False)
        assert resources.staging_account("alice", "here") == (test_accounts.first, True)
    finally:
        resources.close()


def test_a_broker_that_is_not_root_runs_only_the_owners_mapped_to_its_own_account(tmp_path, monkeypatch):
    from broker import runas

    monkeypatch.setattr(runas, "is_root", lambda: False)
    monkeypatch.setattr(runas, "own_login", lambda: "broker-test")
    resources = local_resources(tmp_path)
    try:
        assert resources.local_run_as("alice", "here") is None  # as the broker itself, which is her account
        assert not resources.switches_accounts()
        with pytest.raises(ResourceError) as caught:
            resources.local_run_as("bob", "here")
        assert str(caught.value) == (
            "user 'bob' is mapped to account 'broker-test2' on host 'here', but the broker runs as 'broker-test', "
            "not root: it can only run the nodes of users mapped to 'broker-test' (or set [engine] "
            "run_as_broker_account = true for a single-user broker)")
        assert caught.value.retryable is False
        with pytest.raises(ResourceError, match="user 'carol' has no account on host 'here'"):
            resources.local_run_as("carol", "here")
    finally:
        resources.close()


def test_run_as_broker_account_runs_every_local_payload_and_file_transfer_as_the_broker(tmp_path):
    resources = local_resources(tmp_path, run_as_broker_account=True)
    try:
        for user in ("alice", "bob", "carol"):
            assert resources.local_run_as(user, "here") is None
            assert resources.staging_account(user, "lab") == (None, False)
        assert not resources.switches_accounts()
    finally:
        resources.close()


def test_file_staging_for_a_remote_node_needs_a_local_host_to_map_the_user(tmp_path):
    remote_only = LOCAL.replace(b'<host name="here" launcher="local"><account user="alice" login="broker-test"/>'
                                b'</host>', b"")
    resources = local_resources(tmp_path, xml=remote_only)
    try:
        with pytest.raises(ResourceError, match="the catalogue has no local host to map it"):
            resources.staging_account("alice", "lab")
        assert not resources.switches_accounts()  # no local host: no payload of anyone runs here
    finally:
        resources.close()
