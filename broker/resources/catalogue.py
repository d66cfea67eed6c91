"""The host catalogue: where nodes may run, read from ``hosts.xml`` (schemas/hosts.xsd).

Loading runs the hardened parser of descriptions (no DOCTYPE, no entities, size and depth limits), then
lxml's XSD validator, then the checks the XSD cannot express. Every problem names the file and line::

    conf/hosts.xml:12:0: host 'cluster' (launcher slurm) needs a <scratch> directory

Which of its hosts a node runs on is :mod:`broker.resources.placement`'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from broker.config import LimitSettings
from broker.description import schema as wf_schema
from broker.description.units import parse_duration, parse_size
from broker.description.xmlsafe import parse_document
from broker.description.xsd import Xsd
from broker.errors import ConfigError, DescriptionError, Problem, ResourceError

NAMESPACE = "urn:workflow-broker:hosts:1.0"
SCHEMA_FILE = "hosts.xsd"
LAUNCHERS = ("local", "ssh", "slurm", "pbs", "moab")
BATCH_LAUNCHERS = ("slurm", "pbs", "moab")
#: batch launchers that submit the members of a sweep as job arrays (SLURM --array, Torque -t; MOAB's msub -t
#: arrays are not submitted: their output formats could not be recorded here)
ARRAY_LAUNCHERS = ("slurm", "pbs")
DEFAULT_MAX_JOBS = {"local": 512, "ssh": 32, "slurm": 500, "pbs": 500, "moab": 500}
#: the host of a broker without a catalogue
LOCALHOST = "localhost"

_NS = f"{{{NAMESPACE}}}"
#: what catalogue files may weigh: far less than a workflow
_LIMITS = LimitSettings(max_document_bytes=16 * 1024**2, max_xml_depth=16)


class CatalogueError(ConfigError):
    """Raised when a host catalogue is rejected; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(str(self.problems[0]) + more)


@dataclass(frozen=True, slots=True)
class SshAccess:
    """How to reach a host over SSH."""

    address: str
    port: int = 22
    #: absolute path of the known_hosts file holding the host's key (strict checking)
    known_hosts: str = ""


@dataclass(frozen=True, slots=True)
class HostLimits:
    """The most one node may ask for on a host (None: no limit)."""

    nodes: int | None = None
    cores: int | None = None
    #: bytes
    memory: int | None = None
    #: seconds
    walltime: float | None = None


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """A batch host's scheduler options."""

    default_queue: str | None = None
    #: queues nodes may ask for; empty: any
    queues: tuple[str, ...] = ()
    #: extra directive names nodes may use on this host
    directives: tuple[str, ...] = ()
    #: directory of the scheduler's commands; None: PATH
    commands: str | None = None
    #: most members of one sweep in one job array (0: no arrays, one job per member)
    max_array: int = 1000
    #: tasks of one array that may run at once (the array's ``%M``); 0: as many as the scheduler allows
    array_throttle: int = 0


@dataclass(frozen=True, slots=True)
class AccountRule:
    """Which account a broker user's nodes run under: ``user`` "*" matches everyone, ``{user}`` is replaced."""

    user: str
    login: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Host:
    """One compute resource of the catalogue."""

    name: str
    #: one of LAUNCHERS
    launcher: str
    #: most jobs in flight on this host at once; 0: no per-host limit; none given: DEFAULT_MAX_JOBS[launcher]
    max_jobs: int = -1  # (why those defaults and how to size a host: README "Sizing")
    ssh: SshAccess | None = None
    #: directory holding each account's private work root (scratch/ACCOUNT); relative: to the home directory
    scratch: str | None = None
    #: the Python that runs the elf there
    python: str = "python3"
    #: variables every payload on this host gets (before the node's own)
    env: tuple[tuple[str, str], ...] = ()
    batch: BatchOptions | None = None
    limits: HostLimits = HostLimits()
    accounts: tuple[AccountRule, ...] = ()
    #: elves here also push their status through updateNodeStatus (under `broker serve`)
    push: bool = False
    #: what the host offers (gpu, bigmem, site-a): nodes requiring tags run only where all are carried
    tags: tuple[str, ...] = ()
    #: line of the <host> element (0 for the built-in local host)
    line: int = 0

    def __post_init__(self) -> None:
        if self.max_jobs < 0:  # not given: the launcher's default
            object.__setattr__(self, "max_jobs", DEFAULT_MAX_JOBS.get(self.launcher, 0))

    @property
    def is_batch(self) -> bool:
        """Whether jobs go through a batch scheduler."""
        return self.launcher in BATCH_LAUNCHERS

    @property
    def max_array(self) -> int:
        """Most sweep members in one job array here; 0 where members go out one job each (or bundled)."""
        if self.launcher not in ARRAY_LAUNCHERS or self.batch is None or self.batch.max_array < 2:
            return 0
        return self.batch.max_array


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Every host, in document order, and the default one."""

    hosts: tuple[Host, ...]
    default: str
    #: the file it was read from ("" for the built-in catalogue)
    source: str = ""

    def names(self) -> tuple[str, ...]:
        """Host names in document order."""
        return tuple(h.name for h in self.hosts)

    def get(self, name: str) -> Host:
        """The host called ``name``; ResourceError (not retryable) naming the known hosts if there is none."""
        for host in self.hosts:
            if host.name == name:
                return host
        where = self.source or "the built-in catalogue ([hosts] catalogue is empty)"
        raise ResourceError(f"host '{name}' is not in the host catalogue {where} (known: "
                            f"{', '.join(self.names())})", retryable=False)

    def max_jobs(self, name: str) -> int:
        """Most jobs in flight on host ``name`` at once (0: no per-host limit): the scheduler's throttle."""
        return self.get(name).max_jobs


def builtin_catalogue() -> Catalogue:
    """The catalogue of a broker configured without one: the local host only."""
    return Catalogue(hosts=(Host(name=LOCALHOST, launcher="local"),), default=LOCALHOST)


# ----------------------------------------------------------------------------------------------- loading

#: the catalogue schema (its root element is <hosts>)
HOSTS_XSD = Xsd(SCHEMA_FILE, NAMESPACE, "hosts")


def _validate(tree: etree._ElementTree, filename: str) -> list[Problem]:
    wrong_root = HOSTS_XSD.root_problem(tree, filename)
    if wrong_root is not None:
        return [wrong_root]
    problems = []
    for entry in HOSTS_XSD.errors(tree)[0]:
        label = ""
        if entry.path:
            found = tree.xpath(entry.path)
            element = found[0] if found else None
            while element is not None and element.tag != f"{_NS}host":
                element = element.getparent()
            if element is not None:
                label = f"host '{element.get('name', '?')}': "
        problems.append(Problem(filename, max(entry.line, 1), max(entry.column, 0),
                                label + wf_schema.readable(HOSTS_XSD.plain(entry.message))))
    return problems


def _path(value: str, base: Path) -> str:
    """An absolute path for a path attribute: ``~`` expanded, relative to the catalogue's directory."""
    return str((base / os.path.expanduser(value)).resolve())


def _host(el: etree._Element, base: Path, filename: str, problems: list[Problem], check_files: bool) -> Host:
    name, launcher = el.get("name"), el.get("launcher")
    line = el.sourceline or 1

    def problem(message: str, at: etree._Element | None = None) -> None:
        problems.append(Problem(filename, (at.sourceline if at is not None else None) or line, 0,
                                f"host '{name}': {message}"))

    ssh = scratch = batch = None
    python = "python3"
    env: list[tuple[str, str]] = []
    limits = HostLimits()
    accounts: list[AccountRule] = []
    for child in el:
        tag = etree.QName(child).localname
        if tag == "ssh":
            known = _path(child.get("knownHosts"), base)
            if check_files and not os.path.isfile(known):
                problem(f"known-hosts file {known} does not exist", child)
            ssh = SshAccess(child.get("address"), int(child.get("port", "22")), known)
            if launcher == "local":
                problem("launcher local takes no <ssh> (use launcher ssh)", child)
        elif tag == "scratch":
            scratch = child.text.strip()
            if ".." in scratch.split("/"):
                problem(f"scratch directory {scratch!r} must not contain '..'", child)
        elif tag == "python":
            python = child.text.strip()
        elif tag == "env":
            if child.get("name").startswith("WB_"):
                problem(f"variable {child.get('name')}: names starting with WB_ are reserved for the broker",
                        child)
            env.append((child.get("name"), child.get("value")))
        elif tag == "batch":
            queues = tuple(q.text for q in child if etree.QName(q).localname == "queue")
            directives = tuple(d.text for d in child if etree.QName(d).localname == "directive")
            default_queue = child.get("defaultQueue")
            if default_queue and queues and default_queue not in queues:
                problem(f"default queue '{default_queue}' is not among its queues ({', '.join(queues)})", child)
            commands = child.get("commands")
            batch = BatchOptions(default_queue, queues, directives, _path(commands, base) if commands else None,
                                 max_array=int(child.get("maxArraySize", "1000")),
                                 array_throttle=int(child.get("arrayThrottle", "0")))
            if launcher not in BATCH_LAUNCHERS:
                problem(f"<batch> only applies to {', '.join(BATCH_LAUNCHERS)} hosts, not {launcher}", child)
        elif tag == "limits":
            limits = HostLimits(
                nodes=int(child.get("nodes")) if child.get("nodes") else None,
                cores=int(child.get("cores")) if child.get("cores") else None,
                memory=parse_size(child.get("memory")) if child.get("memory") else None,
                walltime=parse_duration(child.get("walltime")) if child.get("walltime") else None)
        elif tag == "account":
            rule = AccountRule(child.get("user"), child.get("login"), child.get("key"))
            if rule.user != "*" and "{user}" in (rule.login + (rule.key or "")):
                problem(f"account of user '{rule.user}': {{user}} is only allowed with user=\"*\"", child)
            if rule.key and "{user}" not in rule.key:
                rule = AccountRule(rule.user, rule.login, _path(rule.key, base))
            elif rule.key and not rule.key.startswith("/"):
                problem(f"account of user '{rule.user}': a key path with {{user}} must be absolute", child)
            if any(a.user == rule.user for a in accounts):
                problem(f"user '{rule.user}' has two <account> entries", child)
            if ssh is None and rule.key:  # <ssh> comes first (the schema's order)
                # without <ssh> it is an account of the broker's own machine: nothing logs in with a key
                problem(f"account of user '{rule.user}': key applies only to hosts reached over <ssh>", child)
            accounts.append(rule)
    if launcher == "ssh" and ssh is None:
        problem("launcher ssh needs an <ssh> element")
    if launcher != "local" and scratch is None:
        problem(f"launcher {launcher} needs a <scratch> directory")
    if launcher in BATCH_LAUNCHERS and batch is None:
        batch = BatchOptions()
    if el.get("push", "false") in ("true", "1") and launcher == "local":
        problem("push applies to remote hosts (ssh, slurm, pbs, moab): local payloads are watched directly")
    return Host(name=name, launcher=launcher, max_jobs=int(el.get("maxJobs", "-1")),
                push=el.get("push", "false") in ("true", "1"), ssh=ssh, scratch=scratch,
                python=python, env=tuple(env), batch=batch, limits=limits, accounts=tuple(accounts), line=line,
                tags=tuple(dict.fromkeys(el.get("tags", "").split())))


def parse_catalogue(source: bytes, *, filename: str = "<string>", base: Path | None = None,
                    check_files: bool = True) -> Catalogue:
    """A catalogue from ``hosts.xml`` bytes; relative paths against ``base``. Raises CatalogueError.

    ``check_files``: whether known-hosts files must exist now (off to check an example elsewhere).
    """
    try:
        tree = parse_document(source, _LIMITS, filename=filename)
    except DescriptionError as exc:
        raise CatalogueError(exc.problems) from None
    problems = _validate(tree, filename)
    if problems:
        raise CatalogueError(problems)
    base = base or Path.cwd()
    root = tree.getroot()
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for el in root.iterchildren(f"{_NS}host"):
        host = _host(el, base, filename, problems, check_files)
        if host.name in seen:
            problems.append(Problem(filename, host.line, 0, f"host '{host.name}' is declared twice (first at "
                                                             f"line {seen[host.name]})"))
        seen.setdefault(host.name, host.line)
        hosts.append(host)
    default = root.get("default") or hosts[0].name
    if default not in seen:
        problems.append(Problem(filename, root.sourceline or 1, 0,
                                f"the default host '{default}' is not declared (hosts: {', '.join(seen)})"))
    if problems:
        raise CatalogueError(sorted(problems, key=lambda p: (p.line, p.column)))
    return Catalogue(hosts=tuple(hosts), default=default, source=filename)


def load_catalogue(path: str | os.PathLike[str] | None, *, check_files: bool = True) -> Catalogue:
    """The catalogue in file ``path`` (``[hosts] catalogue``), or the built-in one when it is empty."""
    if not path:
        return builtin_catalogue()
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the host catalogue {file}: {exc.strerror}") from None
    return parse_catalogue(data, filename=str(file), base=file.resolve().parent, check_files=check_files)


__all__ = ["AccountRule", "BATCH_LAUNCHERS", "BatchOptions", "Catalogue", "CatalogueError", "Host", "HostLimits",
           "LAUNCHERS", "LOCALHOST", "NAMESPACE", "SshAccess", "builtin_catalogue", "load_catalogue",
           "parse_catalogue"]
