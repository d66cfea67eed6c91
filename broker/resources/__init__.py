"""The compute resources below the launchers: host catalogue, accounts, SSH pool, transports.

The engine builds one :class:`Resources` from its settings and asks it, per node, which host the node runs on::

    host = resources.resolve(spec.resources, node.scheduling, node=path)       # pure, raises if none fits

``resources.max_jobs(host)`` is the per-host throttle. The launchers of each host (made from these resources
by :class:`broker.launchers.registry.Launchers`) share the pool's one SSH connection per (host, account).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from broker import runas
from broker.config import Settings
from broker.description.model import Scheduling
from broker.errors import ResourceError
from broker.resources import catalogue as cat
from broker.resources import placement
from broker.resources.accounts import Account, AccountMap
from broker.resources.catalogue import Catalogue, Host

if TYPE_CHECKING:
    from broker.transfers import Transports


class Resources:
    """Catalogue, accounts, SSH pool and staging transports, built from the settings (no module state)."""

    def __init__(self, settings: Settings, *, catalogue: Catalogue | None = None,
                 accounts: Mapping[tuple[str, str], tuple[str, str | None]] | None = None):
        """``accounts``: rows of the accounts table (see :func:`broker.resources.accounts.load_table`)."""
        hosts = settings.hosts
        self.settings = settings
        self.catalogue = catalogue or cat.load_catalogue(hosts.catalogue)
        self.accounts = AccountMap(self.catalogue, accounts, local_as_broker=settings.engine.run_as_broker_account)
        self._pool: Any = None
        self._lock = threading.Lock()
        from broker.resources import transports  # http.client and ssl: only once resources are made

        self._sftp = transports.SftpTransport(self)
        self._web = transports.HttpTransport(hosts.http_allow, allow_private=hosts.http_allow_private,
                                             timeout=hosts.http_timeout)

    @property
    def pool(self) -> Any:
        """The SSH pool, made on first use: importing paramiko costs ~0.2 s that local runs need not pay."""
        with self._lock:
            if self._pool is None:
                from broker.resources.sshpool import SshPool

                hosts = self.settings.hosts
                self._pool = SshPool(max_channels=hosts.ssh_max_channels, connect_timeout=hosts.ssh_connect_timeout,
                                     command_timeout=hosts.ssh_command_timeout)
            return self._pool

    def transports_for(self, user: str) -> Transports:
        """The staging schemes beyond file:// for ``user``'s nodes (sftp:// as the user's accounts)."""
        from broker.resources import transports

        return transports.for_user(self._sftp, self._web, user)

    # --------------------------------------------------------------------------------- scheduling aids

    def resolve(self, workflow_resources: Sequence[str], scheduling: Scheduling, node: str = "") -> Host:
        """The host a node runs on (see :func:`broker.resources.placement.resolve`)."""
        return placement.resolve(workflow_resources, scheduling, self.catalogue, node)

    def max_jobs(self, host_name: str) -> int:
        """Most jobs in flight on the host at once; 0: no per-host limit."""
        return self.catalogue.max_jobs(host_name)

    def account(self, user: str, host_name: str) -> Account:
        """The account ``user``'s nodes run under on the host."""
        return self.accounts.account(user, host_name)

    # ------------------------------------------------------------------------- accounts of this machine

    def local_run_as(self, user: str, host_name: str) -> runas.RunAs | None:
        """Whom ``user``'s processes and files on host ``host_name`` (one without <ssh>) run as.

        None: as the broker itself (``[engine] run_as_broker_account``, or the owner is mapped to the broker's
        own account). A root broker switches to the mapped account; any other broker cannot, and refuses.
        Raises ResourceError (not retryable) naming the missing or impossible mapping.
        """
        account = self.accounts.account(user, host_name)
        if self.accounts.local_as_broker:
            return None
        if runas.is_root():
            return runas.lookup(account.login)
        own = runas.own_login()
        if account.login == own:
            return None
        raise ResourceError(f"user '{user}' is mapped to account '{account.login}' on host '{host_name}', but the "
                            f"broker runs as '{own}', not root: it can only run the nodes of users mapped to "
                            f"'{own}' (or set [engine] run_as_broker_account = true for a single-user broker)",
                            retryable=False)

    def switches_accounts(self) -> bool:
        """Whether local payloads may start as accounts other than the broker's (their work root must let
        them through: :func:`broker.runas.check_traversable`)."""
        return runas.is_root() and not self.accounts.local_as_broker and \
            any(h.launcher == "local" for h in self.catalogue.hosts)

    def staging_account(self, user: str, host_name: str) -> tuple[runas.RunAs | None, bool]:
        """Whose rights ``file://`` staging of ``user``'s node on ``host_name`` uses on this machine.

        (account, whether the attempt directory is the account's too: a node of a local host). For a node on
        a host with <ssh>, the account is the user's on the catalogue's first local host: file:// paths are
        paths of this machine, whatever host the node runs on.
        """
        host = self.catalogue.get(host_name)
        if host.ssh is None:
            return self.local_run_as(user, host.name), host.launcher == "local"
        if self.accounts.local_as_broker:
            return None, False
        here = next((h for h in self.catalogue.hosts if h.launcher == "local"), None)
        if here is None:
            raise ResourceError(f"file:// staging of user '{user}''s node on host '{host_name}' runs as the "
                                "user's account on the broker's machine, and the catalogue has no local host to "
                                "map it: add one with an <account> for the user", retryable=False)
        return self.local_run_as(user, here.name), False

    def close(self) -> None:
        """Close the SSH connections (close the launchers using them first); payloads and jobs keep running."""
        if self._pool is not None:
            self._pool.close()


__all__ = ["Resources"]
