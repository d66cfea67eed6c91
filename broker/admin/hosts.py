"""The hosts of the catalogue with their tags, limits and nodes in flight (``broker admin hosts``, ``getHosts``).

The command line and the admin API both build their answer here, from the catalogue the broker was configured
with and the one in-flight query :mod:`broker.persistence.queries` also answers ``getServiceState`` from, so the
two always agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from broker.persistence import queries
from broker.resources.catalogue import Catalogue, HostLimits


@dataclass(frozen=True, slots=True)
class HostInfo:
    """One catalogue host as operators see it."""

    name: str
    launcher: str
    tags: tuple[str, ...]
    limits: HostLimits
    #: most jobs in flight there at once; 0: no per-host limit
    max_jobs: int
    #: nodes in flight there now (started, running, staging)
    in_flight: int
    #: whether nodes naming no host run here
    default: bool


def by_catalogue_name(in_flight: Mapping[str, int]) -> dict[str, int]:
    """Nodes in flight per catalogue host: a remote attempt records ``login@host``, which counts for ``host``."""
    counts: dict[str, int] = {}
    for host, count in in_flight.items():
        name = host.rsplit("@", 1)[-1]
        counts[name] = counts.get(name, 0) + count
    return counts


def host_infos(catalogue: Catalogue, s: Session) -> list[HostInfo]:
    """Every host of ``catalogue`` in document order, with its nodes in flight read in session ``s``."""
    flying = by_catalogue_name(queries.hosts_in_flight(s))
    return [HostInfo(h.name, h.launcher, h.tags, h.limits, h.max_jobs, flying.get(h.name, 0),
                     h.name == catalogue.default) for h in catalogue.hosts]


def host_json(info: HostInfo) -> dict[str, Any]:
    """One host as a JSON document (the field names of the API's HostInfo)."""
    limits = info.limits
    return {"name": info.name, "launcher": info.launcher, "tags": list(info.tags), "maxJobs": info.max_jobs,
            "inFlight": info.in_flight, "default": info.default,
            "limits": {"nodes": limits.nodes, "cores": limits.cores, "memoryBytes": limits.memory,
                       "walltimeSeconds": limits.walltime}}
