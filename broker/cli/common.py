"""Helpers shared by the commands that work on workflows: owner, database access, ID resolution, output.

Nothing here imports SQLAlchemy at module level: ``broker --help`` imports every command module, and must
stay fast and never open the database.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from broker.errors import ConfigError, NotFound
from broker.printable import printable
from broker.states import IN_FLIGHT, TERMINAL

#: node states that count as "done" in done/total figures (the node will not run again by itself)
DONE_STATES = tuple(state.value for state in TERMINAL)
#: node states holding a slot: work is under way
IN_FLIGHT_STATES = tuple(state.value for state in IN_FLIGHT)
#: most ids in one SQL IN list (SQLite allows 32,766 parameters per statement); more: count every workflow
MAX_IN_LIST = 1000
#: fewest characters a wrapped message column gets, however narrow the terminal
MIN_WRAP = 30
#: the order states are listed in: finished first (what users look at), then work under way, then waiting
STATE_ORDER = ("succeeded", "failed", "cancelled", "skipped", "running", "staging_out", "queued", "staging_in",
               "retry_wait", "ready", "waiting")


def owner_name(settings: Any) -> str:
    """The broker user commands act as: ``[engine] user``, else the login name. Raises ConfigError."""
    import getpass

    from broker.ids import USER_NAME_RE

    configured = settings.engine.user
    try:
        name = configured or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        raise ConfigError("cannot tell who you are: set [engine] user in the configuration file "
                          "or BROKER_ENGINE_USER") from None
    if not USER_NAME_RE.fullmatch(name):
        where = "[engine] user" if configured else f"the login name {name!r}"
        raise ConfigError(f"{where} is not a valid broker user name ({name!r}: 1 to 32 characters of a-z, 0-9, "
                          "'_' and '-', starting with a letter); set [engine] user in the configuration file or "
                          "BROKER_ENGINE_USER")
    return name


def sqlite_file_missing(url: str) -> Path | None:
    """The path of a SQLite database file that does not exist yet (nothing has run), else None."""
    from broker.persistence.db import is_memory, normalise_url

    parsed = normalise_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory(parsed):
        return None
    path = Path(parsed.database).expanduser()
    return None if path.exists() else path


@contextmanager
def reader(settings: Any) -> Iterator[Any]:
    """A session factory on the configured database (never migrates it); the engine is disposed at the end.

    Raises NotFound when the SQLite file does not exist: nothing has been submitted to it.
    """
    from broker.persistence.db import display_url, session_factory
    from broker.persistence.opening import open_database

    url = settings.database_url()
    missing = sqlite_file_missing(url)
    if missing is not None:
        raise NotFound(f"no database {display_url(url)} (nothing has run yet)")
    engine = open_database(settings, auto_migrate=False)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


@dataclass(frozen=True, slots=True)
class Target:
    """A workflow, or one node of it, named on the command line."""

    workflow_id: int
    workflow_global_id: str
    #: the node's database id and path, None when the whole workflow is meant
    node_id: int | None = None
    node_path: str | None = None

    @property
    def global_id(self) -> str:
        """The workflow's or the node's global id (what the control table takes)."""
        if self.node_path is None:
            return self.workflow_global_id
        return f"{self.workflow_global_id}/{self.node_path}"

    @property
    def what(self) -> str:
        """``workflow wf-...`` or ``node wf-.../path``, for messages."""
        return f"node {self.global_id}" if self.node_path is not None else f"workflow {self.global_id}"


def resolve(session: Any, text: str) -> Target:
    """The target named by a workflow global id, a node global id or an integer workflow id. Raises NotFound."""
    from sqlalchemy import select

    from broker.ids import split_global_id
    from broker.persistence.models import Node, Workflow

    text = text.strip()
    if text.isdigit():
        row = session.execute(select(Workflow.id, Workflow.global_id).where(Workflow.id == int(text))).first()
        if row is None:
            raise NotFound(f"no workflow with id {text}")
        return Target(row.id, row.global_id)
    try:
        wf_gid, path = split_global_id(text)
    except ValueError:
        raise NotFound(f"{text!r} is neither a workflow id (a number or wf-...) nor a node id "
                       "(wf-.../path)") from None
    workflow_id = session.execute(select(Workflow.id).where(Workflow.global_id == wf_gid)).scalar()
    if workflow_id is None:
        raise NotFound(f"no workflow {wf_gid}")
    if not path:
        return Target(workflow_id, wf_gid)
    node_id = session.execute(select(Node.id).where(Node.workflow_id == workflow_id, Node.path == path)).scalar()
    if node_id is None:
        raise NotFound(f"no node {text} (workflow {wf_gid} has no node {path!r})")
    return Target(workflow_id, wf_gid, node_id, path)


def counted_clause() -> Any:
    """SQL condition selecting the work-carrying nodes (execute nodes, unexpanded sweeps), as the engine counts."""
    from sqlalchemy import and_

    from broker.persistence.models import Node

    return and_(Node.kind != "member", Node.members.is_(None))


def node_counts(session: Any, workflow_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """workflow id -> {node state: count} over work-carrying nodes."""
    from sqlalchemy import func, select

    from broker.persistence.models import Node

    if not workflow_ids:
        return {}
    query = select(Node.workflow_id, Node.state, func.count()).where(counted_clause())
    if len(workflow_ids) <= MAX_IN_LIST:
        query = query.where(Node.workflow_id.in_(list(workflow_ids)))
    out: dict[int, dict[str, int]] = {i: {} for i in workflow_ids}
    for workflow_id, state, count in session.execute(query.group_by(Node.workflow_id, Node.state)):
        if workflow_id in out:
            out[workflow_id][state] = count
    return out


def done_total(counts: dict[str, int]) -> tuple[int, int]:
    """(nodes done, nodes in all) from per-state counts."""
    return sum(counts.get(s, 0) for s in DONE_STATES), sum(counts.values())


def ordered_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Non-zero counts in :data:`STATE_ORDER` (unknown states last, by name)."""
    known = [(s, counts[s]) for s in STATE_ORDER if counts.get(s)]
    return known + sorted((s, n) for s, n in counts.items() if n and s not in STATE_ORDER)


# ------------------------------------------------------------------------------------------------- output

def local_time(value: dt.datetime | None, *, millis: bool = False) -> str:
    """A stored UTC time in the local zone, for tables ("-" when missing)."""
    if value is None:
        return "-"
    local = value.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S") + (f".{local.microsecond // 1000:03d}" if millis else "")


def iso(value: dt.datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC, for JSON output."""
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat()


def duration(seconds: float) -> str:
    """``0.42 s``, ``12.3 s``, ``4m05s``, ``2h03m``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def one_line(text: str | None, width: int = 80) -> str:
    """A message squeezed onto one table cell: newlines folded, cut at ``width`` characters."""
    if not text:
        return ""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None, *,
                wrap_last: bool = False, width: int | None = None) -> None:
    """Print rows as left-aligned columns under their headers (the last column is not padded); every cell is
    shown through :func:`~broker.printable.printable`, so no value can break a row or the terminal.

    With ``wrap_last`` the last column (a message) is shown whole: its whitespace folded, wrapped to the
    terminal's width (or ``width``), continuation lines starting under the column.
    """
    out = out or sys.stdout
    texts = [["" if v is None else str(v) for v in row] for row in rows]
    if wrap_last:
        for row in texts:
            row[-1] = " ".join(row[-1].split())  # before escaping: a newline folds to a space, not to "\\n"
    cells = [[str(h) for h in headers]] + [[printable(v) for v in row] for row in texts]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    start = sum(widths[:-1]) + 2 * (len(headers) - 1)
    room = max(MIN_WRAP, (width or terminal_width()) - start)
    for row in cells:
        last = _wrapped(row[-1], room) if wrap_last else [row[-1]]
        head = "  ".join(value.ljust(widths[i]) for i, value in enumerate(row[:-1]))
        out.write((f"{head}  {last[0]}" if row[:-1] else last[0]).rstrip() + "\n")
        for more in last[1:]:
            out.write(" " * start + more + "\n")


def terminal_width() -> int:
    """Columns of the terminal (``$COLUMNS`` first; 100 when output is not a terminal)."""
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def _wrapped(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters (long words cut); one empty line for no text."""
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]


def print_json(value: Any) -> None:
    """Print a JSON document (UTF-8, stable key order) on stdout; the format and bidi characters JSON leaves
    raw in strings are escaped (``\\u202e``, which JSON reads back as the same character)."""
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    sys.stdout.write(printable(text, keep="\n") + "\n")


def print_fields(rows: Sequence[tuple[str, Any]]) -> None:
    """Print ``key  value`` lines, the keys padded to one width, the values shown through printable()."""
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {printable(str(value))}")


def plural(count: int, word: str) -> str:
    """``1 node``, ``3 nodes``."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def database_sessions(settings: Any) -> Any:
    """A session factory on the configured database (an embedded one created or migrated first)."""
    from broker.persistence.db import session_factory
    from broker.persistence.opening import open_database

    return session_factory(open_database(settings, auto_migrate=True))


def not_found_is_usage(handler: Any) -> Any:
    """Wrap a command handler so that an unknown ID exits 2 (a usage error) rather than 3."""
    import functools

    @functools.wraps(handler)
    def wrapped(args: Any, settings: Any) -> int:
        from broker.cli import EXIT_USAGE

        try:
            return handler(args, settings)
        except NotFound as exc:
            if getattr(args, "debug", False):
                raise
            print(f"broker: {printable(str(exc))}", file=sys.stderr)
            return EXIT_USAGE

    return wrapped


def stops_when_output_closes(handler: Any) -> Any:
    """Wrap a command handler whose output is often piped (``| head``): a closed pipe ends it quietly, exit 0."""
    import functools
    import os

    @functools.wraps(handler)
    def wrapped(args: Any, settings: Any) -> int:
        try:
            code = handler(args, settings)
            sys.stdout.flush()  # inside the try: a block-buffered stdout would otherwise fail at exit
            return code
        except BrokenPipeError:
            # the reader has gone: stdout's buffer can never be flushed, so point it at /dev/null for exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            return 0

    return wrapped
