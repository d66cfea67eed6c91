"""The compute resources below the engine: host catalogue, accounts, SSH pool, launchers per host, transports.

The engine builds one :class:`Resources` from its settings and asks it, per node::

    host = resources.resolve(spec.resources, node.scheduling, node=path)       # pure, raises if none fits
    launcher = resources.launcher(host.name, owner)                              # cached per (host, account)
    handle = launcher.launch(request)                       # batch hosts: launch(request, node.scheduling)

and, for a handle it already has (watch, reports, collect, cancel), ``resources.launcher_of(handle.host)``.
``resources.max_jobs(host)`` is the per-host throttle. Launchers of remote hosts share the pool's one
SSH connection per (host, account).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from broker import runas
from broker.config import Settings
from broker.description.model import Scheduling
from broker.errors import ResourceError
from broker.resources import catalogue as cat
from broker.resources.accounts import Account, AccountMap
from broker.resources.catalogue import Catalogue, Host


def _factories() -> dict[str, Any]:
    from broker.launchers.moab import MoabLauncher
    from broker.launchers.pbs import PbsLauncher
    from broker.launchers.slurm import SlurmLauncher
    from broker.launchers.ssh import SshLauncher

    return {"ssh": SshLauncher, "slurm": SlurmLauncher, "pbs": PbsLauncher, "moab": MoabLauncher}


class Resources:
    """Catalogue, accounts, SSH pool and one launcher per (host, account), built from the settings."""

    def __init__(self, settings: Settings, *, local_launcher: Any = None, catalogue: Catalogue | None = None,
                 accounts: Mapping[tuple[str, str], tuple[str, str | None]] | None = None,
                 local_root: str | None = None, install_transports: bool = True):
        """``local_launcher``: the launcher of local hosts (made on first use if None); ``accounts``: rows of
        the accounts table (see :func:`broker.resources.accounts.load_table`); ``local_root``: the engine's
        work directory root (attempt directories under it map to the same relative path on each host)."""
        hosts = settings.hosts
        self.settings = settings
        self.catalogue = catalogue or cat.load_catalogue(hosts.catalogue)
        self.accounts = AccountMap(self.catalogue, accounts, local_as_broker=settings.engine.run_as_broker_account)
        self._pool: Any = None
        self._local = local_launcher
        self._own_local = local_launcher is None
        self._local_root = local_root
        self._lock = threading.RLock()  # launcher() makes the pool while holding it
        self._launchers: dict[tuple[str, str], Any] = {}
        if install_transports:
            from broker.resources import transports

            transports.install(self, http_allow=hosts.http_allow, http_allow_private=hosts.http_allow_private,
                               http_timeout=hosts.http_timeout)

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

    # --------------------------------------------------------------------------------- scheduling aids

    def resolve(self, workflow_resources: Sequence[str], scheduling: Scheduling, node: str = "") -> Host:
        """The host a node runs on (see :func:`broker.resources.catalogue.resolve`)."""
        return cat.resolve(workflow_resources, scheduling, self.catalogue, node)

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

    # ----------------------------------------------------------------------------------------- launchers

    def local_launcher(self) -> Any:
        """The launcher of local hosts (shared)."""
        with self._lock:
            if self._local is None:
                from broker.launchers.local import LocalLauncher

                self._local = LocalLauncher(max_output_bytes=self.settings.limits.max_output_bytes)
            return self._local

    def launcher(self, host_name: str, user: str) -> Any:
        """The launcher running ``user``'s nodes on ``host_name`` (made on first use, then cached)."""
        host = self.catalogue.get(host_name)
        if host.launcher == "local":
            return _LocalAs(self, host, user)
        account = self.accounts.account(user, host_name)
        with self._lock:
            launcher = self._launchers.get((host.name, account.login))
            if launcher is None:
                launcher = self._launchers[(host.name, account.login)] = self._make(host, account, user)
            return launcher

    def remove_workflow(self, host_name: str, user: str, global_id: str) -> bool:
        """Remove a deleted workflow's work directory on a remote host, as ``user``'s account there.

        True when there was one. Local hosts are no-ops (their directories are removed as local paths).
        """
        if self.catalogue.get(host_name).launcher == "local":
            return False
        return self.launcher(host_name, user).endpoint.remove_workflow(global_id)

    def launcher_of(self, handle_host: str) -> Any:
        """The launcher behind a handle's ``host`` (``login@host`` for remote hosts, a name for local ones).

        Only launchers already made through :meth:`launcher` are found (after a restart the engine
        recovers through ``launcher(host, owner)`` first); local hosts always are.
        """
        login, at, name = handle_host.rpartition("@")
        if not at:
            return self.local_launcher()
        with self._lock:
            launcher = self._launchers.get((name, login))
        if launcher is None:
            raise ResourceError(f"no launcher for {handle_host} yet (call launcher(host, user) first)",
                                retryable=False)
        return launcher

    def _make(self, host: Host, account: Account, user: str) -> Any:
        from broker.resources.remote import Endpoint
        from broker.resources.shell import LocalShell

        hosts = self.settings.hosts
        if account.local:
            shell = LocalShell(account.label, command_timeout=hosts.ssh_command_timeout,
                               run_as=self.local_run_as(user, host.name))
        else:
            shell = self.pool.shell(host, account)
        endpoint = Endpoint(host, account, shell, local_root=self._local_root,
                            command_timeout=hosts.ssh_command_timeout)
        options: dict[str, Any] = {"max_output_bytes": self.settings.limits.max_output_bytes,
                                   "stage_max_bytes": self.settings.staging.max_bytes}
        if host.is_batch:
            options.update(poll_interval=hosts.batch_poll_interval, lost_after=hosts.lost_after)
        else:
            options.update(poll_interval=hosts.ssh_poll_interval)
        return _factories()[host.launcher](endpoint, **options)

    def launchers(self) -> list[Any]:
        """Every remote launcher made so far."""
        with self._lock:
            return list(self._launchers.values())

    def close(self) -> None:
        """Stop every launcher's poller and close the SSH connections; payloads and jobs keep running."""
        from broker.resources import transports

        with self._lock:
            launchers = list(self._launchers.values())
            self._launchers.clear()
            local, self._local = (self._local if self._own_local else None), None
        for launcher in launchers:
            launcher.close()
        if local is not None:
            local.close()
        if self._pool is not None:
            self._pool.close()
        transports.uninstall()


class _LocalAs:
    """The shared local launcher as one user's nodes on one local host see it: launch() starts the attempt as
    the user's account with the host's variables; everything else (watch, collect, cancel, recover) is the
    shared launcher's and needs no account, so an attempt is recovered whatever the mapping says now."""

    def __init__(self, resources: Resources, host: Host, user: str):
        self._resources, self._host, self._user = resources, host, user
        self._launcher = resources.local_launcher()

    def launch(self, request: Any) -> Any:
        run_as = self._resources.local_run_as(self._user, self._host.name)
        return self._launcher.launch(request, run_as=run_as, host_env=self._host.env)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)


__all__ = ["Resources"]
