"""The launchers of every host: one per (host, account), made on first use from the compute resources.

The engine builds one :class:`Launchers` next to its :class:`broker.resources.Resources` and asks it, per node::

    host = resources.resolve(spec.resources, node.scheduling, node=path)       # pure, raises if none fits
    launcher = launchers.launcher(host.name, owner)                              # cached per (host, account)
    handle = launcher.launch(request)                       # batch hosts: launch(request, node.scheduling)

and, for a handle it already has (watch, reports, collect, cancel), ``launchers.launcher_of(handle.host)``.
Launchers of remote hosts share the resources' SSH pool: one connection per (host, account).
"""

from __future__ import annotations

import threading
from typing import Any

from broker.errors import ResourceError
from broker.resources import Resources
from broker.resources.accounts import Account
from broker.resources.catalogue import Host


def _factories() -> dict[str, Any]:
    # imported on first remote launcher: local runs need neither the batch dialects nor paramiko
    from broker.launchers.moab import MoabLauncher
    from broker.launchers.pbs import PbsLauncher
    from broker.launchers.slurm import SlurmLauncher
    from broker.launchers.ssh import SshLauncher

    return {"ssh": SshLauncher, "slurm": SlurmLauncher, "pbs": PbsLauncher, "moab": MoabLauncher}


class Launchers:
    """One launcher per (host, account) of the resources' catalogue, and the shared launcher of local hosts."""

    def __init__(self, resources: Resources, *, local_launcher: Any = None, local_root: str | None = None):
        """``local_launcher``: the launcher of local hosts (made on first use if None, and then closed by
        :meth:`close`); ``local_root``: the engine's work directory root (attempt directories under it map to
        the same relative path on each host)."""
        self.resources = resources
        self._local = local_launcher
        self._own_local = local_launcher is None
        self._local_root = local_root
        self._lock = threading.RLock()
        self._launchers: dict[tuple[str, str], Any] = {}
        #: after close(), no launcher is made: one made then (an exit callback of the launcher being closed asks
        #: for the local launcher) would never be closed, and its threads would keep the process from ending
        self._closed = False

    def local_launcher(self) -> Any:
        """The launcher of local hosts (shared)."""
        with self._lock:
            if self._local is None:
                self._refuse_closed()
                self._local = new_local_launcher(self.resources.settings, self._local_root)
            return self._local

    def _refuse_closed(self) -> None:
        if self._closed:
            raise ResourceError("the launchers are closed: the broker is stopping", retryable=True)

    def launcher(self, host_name: str, user: str) -> Any:
        """The launcher running ``user``'s nodes on ``host_name`` (made on first use, then cached)."""
        resources = self.resources
        host = resources.catalogue.get(host_name)
        if host.launcher == "local":
            return _LocalAs(self, host, user)
        account = resources.accounts.account(user, host_name)
        with self._lock:
            launcher = self._launchers.get((host.name, account.login))
            if launcher is None:
                self._refuse_closed()
                launcher = self._launchers[(host.name, account.login)] = self._make(host, account, user)
            return launcher

    def remove_workflow(self, host_name: str, user: str, global_id: str) -> bool:
        """Remove a deleted workflow's work directory on a remote host, as ``user``'s account there.

        True when there was one. Local hosts are no-ops (their directories are removed as local paths).
        """
        if self.resources.catalogue.get(host_name).launcher == "local":
            return False
        return self.launcher(host_name, user).endpoint.remove_workflow(global_id)

    def tail(self, host_name: str, user: str, workdir: str, name: str, max_bytes: int) -> bytes | None:
        """The end of an attempt's stdout or stderr on a remote host, read as ``user``'s account there (None on
        local hosts: their files are read where they are)."""
        if self.resources.catalogue.get(host_name).launcher == "local":
            return None
        return self.launcher(host_name, user).endpoint.tail(workdir, name, max_bytes)

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
        from broker.launchers.remote import Endpoint
        from broker.resources.shell import LocalShell

        resources = self.resources
        settings = resources.settings
        hosts = settings.hosts
        if account.local:
            shell = LocalShell(account.label, command_timeout=hosts.ssh_command_timeout,
                               run_as=resources.local_run_as(user, host.name))
        else:
            shell = resources.pool.shell(host, account)
        endpoint = Endpoint(host, account, shell, local_root=self._local_root,
                            command_timeout=hosts.ssh_command_timeout)
        options: dict[str, Any] = {"max_output_bytes": settings.limits.max_output_bytes,
                                   "stage_max_bytes": settings.staging.max_bytes}
        if host.is_batch:
            options.update(poll_interval=hosts.batch_poll_interval, lost_after=hosts.lost_after)
        else:
            options.update(poll_interval=hosts.ssh_poll_interval, resident=hosts.ssh_agent)
        return _factories()[host.launcher](endpoint, **options)

    def launchers(self) -> list[Any]:
        """Every remote launcher made so far."""
        with self._lock:
            return list(self._launchers.values())

    def close(self) -> None:
        """Stop every launcher's poller (and the local launcher made here); payloads and jobs keep running.

        The resources (SSH pool, transports) are not closed: their owner closes them after this.
        """
        with self._lock:
            self._closed = True
            launchers = list(self._launchers.values())
            self._launchers.clear()
            local, self._local = (self._local if self._own_local else None), None
        for launcher in launchers:
            launcher.close()
        if local is not None:
            local.close()


class _LocalAs:
    """The shared local launcher as one user's nodes on one local host see it: launch() starts the attempt as
    the user's account with the host's variables; everything else (watch, collect, cancel, recover) is the
    shared launcher's and needs no account, so an attempt is recovered whatever the mapping says now."""

    def __init__(self, launchers: Launchers, host: Host, user: str):
        self._resources, self._host, self._user = launchers.resources, host, user
        self._launcher = launchers.local_launcher()

    def launch(self, request: Any, scheduling: Any = None) -> Any:
        run_as = self._resources.local_run_as(self._user, self._host.name)
        return self._launcher.launch(request, run_as=run_as, host_env=self._host.env)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)


__all__ = ["Launchers"]


def new_local_launcher(settings: Any, local_root: str | None) -> Any:
    """The local launcher the settings ask for: under resident agents (``[hosts] local_agent``) or wrappers.

    The agents keep their sockets and journals in ``<work root>/.agents``; without a work root, wrappers.
    """
    if settings.hosts.local_agent and local_root:
        from broker.launchers.agentlocal import AgentLauncher

        return AgentLauncher.of_work_root(local_root, max_output_bytes=settings.limits.max_output_bytes)
    from broker.launchers.local import LocalLauncher

    return LocalLauncher(max_output_bytes=settings.limits.max_output_bytes)
