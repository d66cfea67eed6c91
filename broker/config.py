"""Settings: frozen dataclasses, one per INI section, each field with its default, documentation and unit.

They are loaded once (:func:`broker.configload.load_settings`: the defaults, then an INI file,
then ``BROKER_<SECTION>_<KEY>`` overrides, strictly) and passed explicitly. ``conf/broker.ini`` documents
every setting and a test keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints


def _doc(text: str, unit: str = "") -> dict[str, str]:
    return {"doc": text, "unit": unit}


def default_state_dir() -> Path:
    """Where the embedded database and work directories live unless configured (XDG state home)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "workflow-broker"


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where the broker keeps its state: the embedded SQLite file or a PostgreSQL database."""

    url: str = field(
        default="",
        metadata=_doc("SQLAlchemy URL. Empty: the embedded SQLite database <state dir>/broker.db, "
                      "created and migrated on first use. PostgreSQL: postgresql+psycopg://user@host/db"),
    )
    busy_timeout: float = field(default=30.0, metadata=_doc("how long to wait for a locked SQLite database", "s"))
    sqlite_synchronous: str = field(
        default="full",
        metadata=_doc("SQLite PRAGMA synchronous: full (a commit survives power loss), normal (faster; in WAL "
                      "mode the last commits may be lost on power loss, never corrupted), off, extra"),
    )


@dataclass(frozen=True, slots=True)
class DescriptionSettings:
    """What a workflow description may refer to beyond its own text."""

    include_dirs: tuple[str, ...] = field(
        default=(),
        metadata=_doc("directories that payload references and parameter line files may be read from "
                      "(space separated); empty: no file references are allowed"),
    )
    allowed_directives: tuple[str, ...] = field(
        default=("constraint", "qos", "gres", "licenses", "reservation", "exclusive", "mail-type", "begin",
                 "nice", "hint"),
        metadata=_doc("scheduler directive names a <directive> may use (space separated)"),
    )


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Size limits every description and every sweep expansion is checked against."""

    max_document_bytes: int = field(default=64 * 1024**2, metadata=_doc("largest description accepted", "bytes"))
    max_xml_depth: int = field(default=64, metadata=_doc("deepest element nesting in a description", "levels"))
    max_text_bytes: int = field(default=1024**2,
                                metadata=_doc("largest attribute value or text (payloads included)", "bytes"))
    max_attributes_per_element: int = field(default=256, metadata=_doc(
        "most attributes one element of a description or of a SOAP request may carry", "attributes"))
    max_attributes: int = field(default=1_000_000, metadata=_doc(
        "most attributes in one description or SOAP request, all elements together", "attributes"))
    max_file_bytes: int = field(default=8 * 1024**2,
                                metadata=_doc("largest referenced payload or parameter line file", "bytes"))
    max_nodes: int = field(default=1_000_000,
                           metadata=_doc("most nodes in one workflow, after every expansion (checked at validation, "
                                         "and again before each run-time expansion is written)", "nodes"))
    max_nodes_per_user: int = field(default=2_000_000, metadata=_doc(
        "most nodes of one user's unfinished workflows together, admins and the command line included "
        "(checked at submission and before each run-time expansion); 0: no limit", "nodes"))
    max_members: int = field(default=200_000,
                             metadata=_doc("most members one parameterized node may expand to", "members"))
    max_nesting: int = field(default=8, metadata=_doc("deepest nesting of parameterized nodes", "levels"))
    max_values: int = field(default=200_000, metadata=_doc("most values in one parameter", "values"))
    max_spawn_depth: int = field(default=4, metadata=_doc(
        "most levels of dynamic spawn: a node spawned by a node spawned by ... (1: spawned nodes may not spawn)",
        "levels"))
    max_output_bytes: int = field(default=1024**2,
                                  metadata=_doc("largest output property value (JSON) a payload may report", "bytes"))
    max_argument_bytes: int = field(default=64 * 1024, metadata=_doc(
        "largest workflow argument value given at submission, a file argument's content included (it reaches "
        "payloads as an environment variable, which Linux caps at 128 KiB)", "bytes"))


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How the running broker schedules nodes: work directories, concurrency, worker pools, clocks."""

    workdir: str = field(default="", metadata=_doc("root of node work directories; empty: <state dir>/work. A root "
                                                   "broker that runs payloads as their owners' accounts needs every "
                                                   "directory above it passable by others (mode o+x): not under "
                                                   "/root"))
    user: str = field(default="", metadata=_doc("the broker user that `broker run` submits as; empty: the login "
                                                "name (it must match [a-z][a-z0-9_-]*)"))
    run_as_broker_account: bool = field(
        default=False, metadata=_doc("run every local payload and file:// transfer as the broker's own account, "
                                     "whoever owns it (a single-user broker); false: as the owner's account from "
                                     "the accounts mapping, which needs the broker to run as root unless the owner "
                                     "is mapped to the broker's own account"))
    max_in_flight: int = field(default=10_000, metadata=_doc(
        "most nodes in flight at once, broker-wide: a safety cap over every host together; each host is "
        "throttled by its own maxJobs (README \"Sizing\")", "nodes"))
    max_in_flight_per_user: int = field(default=0, metadata=_doc("most nodes in flight per user; 0: no limit",
                                                                 "nodes"))
    launch_workers: int = field(default=4, metadata=_doc("launch worker actors (render and start payloads)",
                                                         "threads"))
    stage_workers: int = field(default=4, metadata=_doc("stage worker actors (file transfers)", "threads"))
    poll_workers: int = field(default=2, metadata=_doc("poll worker actors (results, progress, control)",
                                                       "threads"))
    cancel_workers: int = field(default=1, metadata=_doc("cancel worker actors", "threads"))
    expand_workers: int = field(default=1, metadata=_doc("expand worker actors (parameterized nodes)", "threads"))
    tick_interval: float = field(default=0.1, metadata=_doc("clock resolution of retry timers and polls", "s"))
    control_interval: float = field(default=0.25, metadata=_doc("how often a running broker reads cancel and "
                                                                "restart commands", "s"))
    report_interval: float = field(default=0.5, metadata=_doc("how often running payloads' progress and output "
                                                              "reports are read", "s"))
    lease_renew: float = field(default=5.0, metadata=_doc("PostgreSQL: how often the broker renews its lease on "
                                                          "the database (its right to write)", "s"))
    lease_timeout: float = field(default=30.0, metadata=_doc(
        "PostgreSQL: a lease not renewed for this long is free: the broker that held it writes nothing more and "
        "another may take over. At least twice lease_renew", "s"))
    standby_poll: float = field(default=1.0, metadata=_doc(
        "PostgreSQL: how often a standby `broker serve` looks at the lease of the active broker; it takes over "
        "at most lease_timeout + standby_poll after the active broker's last renewal", "s"))
    standby_takeover: str = field(default="remote-only", metadata=_doc(
        "PostgreSQL: what a standby does when the lease it waits for was last held on another machine (another "
        "boot or pid namespace): remote-only (take over; attempts on that machine's local host are recorded "
        "lost and retried per their node's policy: they cannot be seen from here) or refuse (stay a standby and "
        "say so once; a broker restarted on that machine takes the lease as usual)"))


@dataclass(frozen=True, slots=True)
class StagingSettings:
    """Where stage-in and stage-out transfers may read and write, and how much."""

    roots: tuple[str, ...] = field(default=(), metadata=_doc("directories file:// stage-in sources and stage-out "
                                                             "targets must lie in (space separated); empty: none"))
    max_bytes: int = field(default=10 * 1024**3, metadata=_doc("largest file one transfer may copy", "bytes"))


@dataclass(frozen=True, slots=True)
class EventsSettings:
    """The message bus events are published on (the outbox relay)."""

    url: str = field(default="", metadata=_doc("bus URL: stomp://host:port, stomp+ssl://host:port (STOMP over "
                                               "TLS), memory:// (tests); empty: events are only stored (no "
                                               "outbox rows), never published, not even later with a bus"))
    login: str = field(default="", metadata=_doc("user name the relay logs in to the bus with; empty: no login"))
    passcode: str = field(default="", metadata=_doc("password of login (prefer the environment variable "
                                                    "BROKER_EVENTS_PASSCODE to writing it here)"))
    ssl_ca_file: str = field(default="", metadata=_doc("stomp+ssl: the CA certificates (PEM) the bus's certificate "
                                                       "must chain to; empty: the system's trusted CAs. The "
                                                       "certificate must also name the URL's host"))
    ssl_cert_file: str = field(default="", metadata=_doc("stomp+ssl: the relay's own certificate (PEM), for a bus "
                                                         "that asks clients for one; empty: none"))
    ssl_key_file: str = field(default="", metadata=_doc("stomp+ssl: the private key of ssl_cert_file (PEM); empty: "
                                                        "in ssl_cert_file"))
    vhost: str = field(default="", metadata=_doc("STOMP host header; RabbitMQ reads it as the virtual host (usually "
                                                 "/); empty: the host name of url"))
    heartbeat: float = field(default=10.0, metadata=_doc("STOMP heart-beat interval, both ways: a silent bus is "
                                                         "noticed after about 1.5 times this; 0: no heart-beats", "s"))
    connect_timeout: float = field(default=10.0, metadata=_doc("how long connecting to the bus may take", "s"))
    window: int = field(default=1000, metadata=_doc("messages the relay publishes as one bus transaction, confirmed "
                                                   "by one receipt and marked sent by one database update",
                                                   "messages"))
    receipt_timeout: float = field(default=10.0, metadata=_doc("how long the relay waits for a window's receipt "
                                                               "(or a blocked send) before it reconnects and "
                                                               "publishes the unconfirmed events again", "s"))
    reconnect_initial: float = field(default=0.5, metadata=_doc("first wait after the bus failed; it doubles (with "
                                                                "jitter) at each failure in a row", "s"))
    reconnect_max: float = field(default=30.0, metadata=_doc("longest wait between two connection attempts", "s"))
    probe_interval: float = field(default=0.25, metadata=_doc("while the bus is down, how often the relay checks "
                                                             "(a TCP connection, no login) whether it accepts "
                                                             "connections again: when it does, after refusing "
                                                             "them, the relay reconnects at once instead of "
                                                             "waiting out its backoff", "s"))
    poll_interval: float = field(default=1.0, metadata=_doc("how often the relay looks for unsent events when no "
                                                            "commit woke it (events written by other processes)",
                                                            "s"))
    batch_delay: float = field(default=0.02, metadata=_doc("a commit within this long of the relay's last round "
                                                           "waits for the rest of it, so that a busy writer's events "
                                                           "go out a few commits per window (each window costs a "
                                                           "read, a bus transaction and a mark); an event after a "
                                                           "quiet spell goes out at once; 0: a round per commit",
                                                           "s"))
    stop_timeout: float = field(default=5.0, metadata=_doc("on stop, how long the relay goes on publishing unsent "
                                                           "events; the rest is published after the next start",
                                                           "s"))
    exit_drain_timeout: float = field(default=10.0, metadata=_doc("broker run and broker resume: at exit, how "
                                                                 "long to wait for the outbox to drain (trying "
                                                                 "to reach the bus if it is down), so consumers "
                                                                 "get the final events when the command has "
                                                                 "exited; it says how many are left; the next "
                                                                 "broker on the database publishes them", "s"))
    max_rejections: int = field(default=5, metadata=_doc("how often the bus may refuse an event for a workflow's "
                                                         "publishMetadataTo destination (an ERROR frame: not "
                                                         "authorized...) before the relay skips it there, with an "
                                                         "error in the log; 0: never skip (the events behind it "
                                                         "wait). Refusals on the broker's own topics are never "
                                                         "skipped", "times"))
    metadata_destinations: tuple[str, ...] = field(
        default=("/topic/", "/queue/"),
        metadata=_doc("prefixes a workflow's publishMetadataTo must start with (/topic/lab. /queue/results., "
                      "space separated); whatever they say, it must be /topic/NAME or /queue/NAME with NAME of "
                      "1-200 letters, digits, '_', '.', '-' not starting with 'broker.' (the broker's own "
                      "topics); empty: publishMetadataTo is refused"))

    @property
    def publishing(self) -> bool:
        """Whether a bus is configured; without one events are only stored (no outbox rows, never published)."""
        return bool(self.url.strip())


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The SOAP API of `broker serve`."""

    listen: str = field(default="127.0.0.1:8080", metadata=_doc("address and port the service listens on"))
    public_url: str = field(default="", metadata=_doc("base URL clients reach the service at, written into the "
                                                      "WSDLs (core: <public_url>/broker, admin: <public_url>/admin); "
                                                      "empty: http://<listen>"))
    threads: int = field(default=8, metadata=_doc("HTTP worker threads: calls served at once", "threads"))
    processes: int = field(default=1, metadata=_doc(
        "server processes on the one port (SO_REUSEPORT): the broker's own, and N-1 API-only ones that answer "
        "status reads and event pages from the database and forward every other call to it (README \"Several "
        "API processes\")", "processes"))
    max_request_bytes: int = field(default=16 * 1024**2,
                                   metadata=_doc("largest SOAP request accepted (larger descriptions: use "
                                                 "workflowUrl)", "bytes"))
    page_size: int = field(default=200, metadata=_doc("most events one getStatusInfo* call returns", "events"))
    credential_ttl: float = field(default=60.0, metadata=_doc("how long a verified user name and password are "
                                                              "remembered (the slow hash is paid once per period)",
                                                              "s"))
    workflow_urls: tuple[str, ...] = field(default=(), metadata=_doc("URL prefixes a submission's workflowUrl may "
                                                                     "be fetched from (file:///srv/wf/ "
                                                                     "https://host/wf/, space separated); empty: "
                                                                     "workflowUrl is refused"))
    drain_timeout: float = field(default=30.0, metadata=_doc("on SIGTERM, how long in-flight calls may take to "
                                                             "finish", "s"))
    fast_status: bool = field(default=True, metadata=_doc("answer getStatusInfoForId and the event pages "
                                                          "(getStatusInfo, getStatusInfoForUser) without going "
                                                          "through spyne (the same answers, written directly: the "
                                                          "most frequent calls); False: through spyne like every "
                                                          "other call"))
    header_timeout: float = field(default=10.0, metadata=_doc("how long a connection may take to send a request's "
                                                              "line and headers (from its opening or its previous "
                                                              "answer); an idle connection is closed after it", "s"))
    min_body_rate: int = field(default=1024, metadata=_doc("slowest a request body may arrive, averaged from the end "
                                                           "of its headers, after a first header_timeout",
                                                           "bytes/s"))
    max_pending_per_address: int = field(default=8, metadata=_doc("connections from one client address that have "
                                                                  "not sent a complete request yet; more are "
                                                                  "refused (503); 0: no limit (behind a proxy)",
                                                                  "connections"))
    metrics_listen: str = field(default="", metadata=_doc("address and port (host:port) serving /metrics without "
                                                          "authentication, for a Prometheus scraper; then the "
                                                          "service port does not serve it; empty: /metrics on the "
                                                          "service port, for admins only (HTTP Basic)"))
    writes: str = field(default="engine", metadata=_doc(
        "engine (broker serve runs the engine and applies its API's changes itself) or rows (an API process "
        "without an engine, on any machine: it serves the whole API, reads the database, and makes every change "
        "as a request row that the active broker applies; PostgreSQL only; README \"API processes on other "
        "machines\")"))
    request_timeout: float = field(default=60.0, metadata=_doc(
        "with writes = rows: how long a call waits for the active broker to apply its request before a Server "
        "fault (the request is withdrawn: nothing changes)", "s"))


@dataclass(frozen=True, slots=True)
class HostsSettings:
    """The compute resources: the host catalogue."""

    catalogue: str = field(default="", metadata=_doc("hosts.xml file (schemas/hosts.xsd); empty: only the local "
                                                     "host"))
    ssh_poll_interval: float = field(default=1.0, metadata=_doc("how often the status files of the attempts "
                                                                "running on one SSH host are read (one "
                                                                "command per host and account)", "s"))
    batch_poll_interval: float = field(default=5.0, metadata=_doc("how often one batch host is polled: one "
                                                                  "status-file read and one scheduler query "
                                                                  "(squeue) per host and account", "s"))
    lost_after: float = field(default=600.0, metadata=_doc("how long an attempt may be unknown to a scheduler "
                                                           "that answers, with no result file, before it "
                                                           "counts as lost", "s"))
    ssh_max_channels: int = field(default=8, metadata=_doc("commands and transfers at once over the one SSH "
                                                           "connection of a host and account (sshd allows 10 "
                                                           "by default: MaxSessions)", "channels"))
    ssh_connect_timeout: float = field(default=10.0, metadata=_doc("how long connecting and authenticating to "
                                                                   "an SSH host may take", "s"))
    ssh_command_timeout: float = field(default=60.0, metadata=_doc("how long one remote command (a launch, a "
                                                                   "poll, a submission) may take", "s"))
    http_allow: tuple[str, ...] = field(default=(), metadata=_doc("URL prefixes http(s):// stage-in sources "
                                                                  "must start with (https://data.example.org/"
                                                                  "pub/, space separated); empty: none"))
    http_allow_private: bool = field(default=False, metadata=_doc("whether http(s):// stage-in may reach "
                                                                  "loopback, private and link-local addresses"))
    http_timeout: float = field(default=30.0, metadata=_doc("how long an http(s):// stage-in may wait for the "
                                                            "server", "s"))
    local_agent: bool = field(default=True, metadata=_doc("whether local payloads start under a resident agent "
                                                          "per account (one process per payload) instead of a "
                                                          "wb-run.sh wrapper each; an account whose agent "
                                                          "cannot start gets wrappers"))
    ssh_agent: bool = field(default=True, metadata=_doc("whether SSH hosts run payloads under a resident agent per "
                                                        "host and account (one process per payload) instead of "
                                                        "an elf each; a host where it cannot run (Python before "
                                                        "3.9, Linux before 5.3) gets elfs"))


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """Where `broker admin archive` and archiveWorkflowsTo may write archives of finished workflows."""

    roots: tuple[str, ...] = field(default=(), metadata=_doc("directories file:// archive targets must lie in "
                                                             "(space separated); empty: none"))
    remote_roots: tuple[str, ...] = field(default=(), metadata=_doc("sftp://HOST/DIR prefixes sftp:// archive "
                                                                    "targets must start with, HOST a host of the "
                                                                    "catalogue (space separated); empty: none"))
    max_file_bytes: int = field(default=1024**3, metadata=_doc("largest part of one node output file (stdout, "
                                                               "stderr) an archive keeps; a longer file keeps "
                                                               "its first bytes and is marked truncated",
                                                               "bytes"))


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """Where log messages go."""

    config: str = field(default="", metadata=_doc("logging.config fileConfig INI file; empty: plain stderr logging"))
    level: str = field(default="INFO", metadata=_doc("root level when no logging config file is given"))


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the broker, one attribute per INI section."""

    database: DatabaseSettings = DatabaseSettings()
    description: DescriptionSettings = DescriptionSettings()
    limits: LimitSettings = LimitSettings()
    engine: EngineSettings = EngineSettings()
    staging: StagingSettings = StagingSettings()
    hosts: HostsSettings = HostsSettings()
    events: EventsSettings = EventsSettings()
    api: ApiSettings = ApiSettings()
    archive: ArchiveSettings = ArchiveSettings()
    logging: LoggingSettings = LoggingSettings()
    #: the file these settings were read from, if any
    source: str | None = None

    def database_url(self) -> str:
        """The configured database URL, or the embedded SQLite default."""
        if self.database.url:
            return self.database.url
        return f"sqlite:///{default_state_dir() / 'broker.db'}"

    def replace(self, section: str, **values: Any) -> Settings:
        """A copy with some keys of one section replaced (used for command-line options)."""
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **values)})


def sections() -> dict[str, type]:
    """Section name -> its settings dataclass."""
    hints = get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings) if f.name != "source"}
