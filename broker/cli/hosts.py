"""``broker admin hosts``: the catalogue's hosts with tags, limits and nodes in flight (as the API's getHosts)."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli import EXIT_OK
from broker.cli.common import print_json, print_table, stops_when_output_closes


@stops_when_output_closes
def hosts_command(args: argparse.Namespace, settings: Any) -> int:
    """Print every catalogue host with its tags, limits and nodes in flight (getHosts)."""
    from broker.admin.hosts import host_infos, host_json
    from broker.cli.common import reader
    from broker.resources.catalogue import load_catalogue

    # known-hosts files may live where only the broker's account reads them: listing needs none of them
    catalogue = load_catalogue(settings.hosts.catalogue, check_files=False)
    with reader(settings) as sessions, sessions() as s:
        infos = host_infos(catalogue, s)
    if args.json:
        print_json([host_json(i) for i in infos])
        return EXIT_OK
    print_table(("HOST", "LAUNCHER", "TAGS", "LIMITS", "MAX JOBS", "IN FLIGHT"),
                [(i.name + (" (default)" if i.default else ""), i.launcher, " ".join(i.tags) or "-", _limits(i.limits),
                  i.max_jobs or "-", i.in_flight) for i in infos])
    return EXIT_OK


def _limits(limits: Any) -> str:
    from broker.resources.placement import size_text

    shown = [f"{what} {value}" for what, value in (("nodes", limits.nodes), ("cores", limits.cores)) if value]
    if limits.memory:
        shown.append(f"memory {size_text(limits.memory)}")
    if limits.walltime:
        shown.append(f"walltime {limits.walltime:g} s")
    return ", ".join(shown) or "-"
