"""Accounts: which account (and SSH key) a broker user's nodes run under on each host.

Payloads run as their user's own account, never as the broker's: a user without an account on a host
cannot run nodes there. Mappings come from the ``accounts`` table (``broker.persistence.models.Account``)
first, then from the host's ``<account>`` entries in the catalogue (a named user, then ``user="*"``, where
``{user}`` stands for the broker user name). The same holds for hosts without ``<ssh>`` (local, or a batch
system submitted to from the broker's own machine): their accounts are accounts of this machine, which
:mod:`broker.runas` starts processes as. Only ``local_as_broker`` (``[engine] run_as_broker_account``, and
``broker run``: the invoking user's own run) maps everyone to the broker's own account there.

Each account gets a private work root on the host, ``<scratch>/<account>`` (mode 0700); every attempt's
work directory lies under it (also mode 0700).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

from broker.errors import ResourceError
from broker.ids import USER_NAME_RE
from broker.resources.catalogue import Catalogue, Host
from broker.runas import own_login

#: an account name on a host (POSIX portable user names, as useradd accepts them)
LOGIN_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


@dataclass(frozen=True, slots=True)
class Account:
    """The account one broker user's nodes run under on one host."""

    host: str
    #: the login name on the host
    login: str
    #: private key file for SSH; None: the host needs none (no <ssh>)
    key: str | None = None
    #: True when the host is reached without SSH: the login is an account of the broker's machine
    local: bool = False

    @property
    def label(self) -> str:
        """``login@host``: how attempts on this account are named in handles, events and messages."""
        return f"{self.login}@{self.host}"


def work_root(host: Host, account: Account) -> str:
    """The account's private work root on ``host``: ``<scratch>/<login>`` (relative: to its home)."""
    return posixpath.join(host.scratch or ".broker-work", account.login)


class AccountMap:
    """Resolves (broker user, host) to an Account; thread-safe (read-only after construction)."""

    def __init__(self, catalogue: Catalogue, table: Mapping[tuple[str, str], tuple[str, str | None]] | None = None,
                 *, local_as_broker: bool = False):
        """``table``: (user name, host name) -> (login, key path), e.g. from :func:`load_table`;
        ``local_as_broker``: hosts without ``<ssh>`` run every user as the broker's own account."""
        self._catalogue = catalogue
        self._table = dict(table or {})
        self._own = own_login()
        self.local_as_broker = local_as_broker

    def account(self, user: str, host_name: str) -> Account:
        """The account ``user`` runs under on ``host_name``; ResourceError (not retryable) if there is none."""
        host = self._catalogue.get(host_name)
        if host.ssh is None and self.local_as_broker:
            return Account(host=host.name, login=self._own, key=None, local=True)
        if not USER_NAME_RE.fullmatch(user):
            raise ResourceError(f"'{user}' is not a broker user name", retryable=False)
        found = self._table.get((user, host.name))
        if found is not None:
            login, key = found
        else:
            rule = next((r for r in host.accounts if r.user == user), None) or \
                next((r for r in host.accounts if r.user == "*"), None)
            if rule is None:
                where = self._catalogue.source or "a host catalogue ([hosts] catalogue)"
                single = "; or [engine] run_as_broker_account = true for a single-user broker" \
                    if host.ssh is None else ""
                raise ResourceError(f"user '{user}' has no account on host '{host.name}' (add an <account> to "
                                    f"{where}, or a row to the accounts table{single})", retryable=False)
            login = rule.login.replace("{user}", user)
            key = rule.key.replace("{user}", user) if rule.key else None
        if not LOGIN_RE.fullmatch(login):
            raise ResourceError(f"user '{user}': '{login}' is not a valid account name on host '{host.name}'",
                                retryable=False)
        if host.ssh is None:
            return Account(host=host.name, login=login, key=None, local=True)
        return Account(host=host.name, login=login, key=key)


def load_table(session) -> dict[tuple[str, str], tuple[str, str | None]]:
    """Every row of the ``accounts`` table: (user name, host) -> (account, key path)."""
    from sqlalchemy import select

    from broker.persistence.models import Account as AccountRow, User

    rows = session.execute(select(User.name, AccountRow.host, AccountRow.account, AccountRow.key_path)
                           .join(User, User.id == AccountRow.user_id)).all()
    return {(r.name, r.host): (r.account, r.key_path) for r in rows}


__all__ = ["Account", "AccountMap", "LOGIN_RE", "load_table", "work_root"]
