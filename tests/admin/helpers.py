"""Workflows made by a real engine, then operated on by ``broker admin`` subprocesses and read back.

:func:`run_workflows` runs a few workflows to their end with an in-process engine on the test's database and
stops it, so the command line finds a database no broker holds. :class:`Snapshot` keeps what the database
said of a workflow before an archive or a deletion, to compare with what comes back.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from broker.persistence.models import Attempt, Event, Node, Outbox, User, Workflow
from tests.cli.helpers import Cli
from tests.engine.helpers import Broker
from tests.fixtures import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "conf" / "examples"
#: the operator the command line runs as (tests.cli.helpers.OWNER): its events say admin:tester
ACTOR = "admin:tester"


def workflow(body: str, name: str = "test") -> bytes:
    return (f'<workflow xmlns="urn:workflow-broker:workflow:1.0" name="{name}">'
            + textwrap.dedent(body) + "</workflow>").encode()


def gated(gate: Path, name: str = "gated") -> bytes:
    """A workflow whose one node runs until ``gate`` exists (bounded to a minute)."""
    return workflow(f'<node id="wait"><payload type="sh">i=0; while [ ! -e "{gate}" ] &amp;&amp; [ $i -lt 600 ]; '
                    f'do sleep 0.1; i=$((i+1)); done; echo gate open</payload></node>', name)


def example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def selection(select_xml: str = "", *, delete_after: bool = False, keep: str = "") -> str:
    """An <archive> selection document."""
    return (f'<archive xmlns="urn:workflow-broker:archive:1" deleteAfter="{str(delete_after).lower()}">'
            f"<select>{select_xml}</select>{keep}</archive>")


@dataclass
class Made:
    """Workflows of the test database, by label: database id and global id."""

    ids: dict[str, int]
    gids: dict[str, str]


def run_workflows(url: str, tmp: Path, documents: dict[str, tuple[bytes, str]], *,
                  running: dict[str, tuple[bytes, str]] | None = None, **broker_settings: Any) -> Made:
    """Run ``documents`` (label -> (document, owner)) to their end; start ``running`` ones and leave them
    running (their first node in flight) when the engine stops."""
    broker = Broker(url, tmp)
    for section, values in broker_settings.items():
        broker.settings = broker.settings.replace(section, **values)
    broker.start()
    try:
        ids = {label: broker.run(doc, owner)[0] for label, (doc, owner) in documents.items()}
        for label, (doc, owner) in (running or {}).items():
            ids[label] = broker.submit(doc, owner)
            wait_for(lambda i=ids[label]: "running" in broker.node_states(i).values(),
                     what=f"{label} to have a node running")
        with broker.sessions() as s:
            gids = {label: s.get(Workflow, i).global_id for label, i in ids.items()}
    finally:
        broker.stop()
    return Made(ids, gids)


@dataclass(frozen=True)
class Snapshot:
    """What the database held of one workflow."""

    descriptor: str
    state_xml: str
    events: list[dict[str, Any]]
    nodes: int
    outbox: int


def snapshot(sessions: Any, workflow_id: int) -> Snapshot:
    from broker.persistence import queries
    from broker.persistence.attempts import attempts_of_workflow
    from broker.statexml import workflow_xml

    with sessions() as s:
        wf = s.get(Workflow, workflow_id)
        owner = s.execute(select(User.name).where(User.id == wf.owner_id)).scalar_one()
        counts = dict(s.execute(select(Node.state, func.count()).where(Node.workflow_id == workflow_id,
                                                                       queries.counted()).group_by(Node.state)).all())
        state_xml = workflow_xml(wf, owner, queries.workflow_nodes(s, workflow_id), counts,
                                 attempts_of_workflow(s, workflow_id))
        events = [{"id": str(e.id), "seq": str(e.seq), "type": e.type, "state": e.state, "actor": e.actor,
                   "time": e.time.isoformat(), "node": e.node_path, "message": e.message,
                   "properties": {k: json.loads(json.dumps(v)) for k, v in (e.properties or {}).items()}}
                  for e in s.scalars(select(Event).where(Event.workflow_id == workflow_id).order_by(Event.id))]
        nodes = s.execute(select(func.count()).select_from(Node).where(Node.workflow_id == workflow_id)).scalar_one()
        outbox = s.execute(select(func.count()).select_from(Outbox).join(Event, Event.id == Outbox.event_id)
                           .where(Event.workflow_id == workflow_id)).scalar_one()
        return Snapshot(wf.descriptor, state_xml, events, nodes, outbox)


def archived_events(archive: Any) -> list[dict[str, Any]]:
    """The events of an archive read back, in the form :func:`snapshot` gives."""
    return [{"id": e["id"], "seq": e["seq"], "type": e["type"], "state": e.get("state"), "actor": e["actor"],
             "time": e["time"], "node": e.get("node"), "message": e["message"],
             "properties": {k: json.loads(v) for k, v in e["properties"].items()}} for e in archive.events]


def workflow_rows(sessions: Any) -> dict[str, tuple[int, int, int, int]]:
    """Global id -> (nodes, events, outbox rows, attempts) of every workflow in the database."""
    with sessions() as s:
        out = {}
        for wf in s.scalars(select(Workflow)):
            nodes = s.execute(select(func.count()).select_from(Node).where(Node.workflow_id == wf.id)).scalar_one()
            events = s.execute(select(func.count()).select_from(Event).where(Event.workflow_id == wf.id)).scalar_one()
            outbox = s.execute(select(func.count()).select_from(Outbox).join(Event, Event.id == Outbox.event_id)
                               .where(Event.workflow_id == wf.id)).scalar_one()
            attempts = s.execute(select(func.count()).select_from(Attempt)
                                 .where(Attempt.workflow_id == wf.id)).scalar_one()
            out[wf.global_id] = (nodes, events, outbox, attempts)
        return out


def orphan_attempts(sessions: Any) -> int:
    """Attempt rows whose workflow or node is gone (a deletion must take them with it)."""
    with sessions() as s:
        return s.execute(select(func.count()).select_from(Attempt).where(
            ~select(Workflow.id).where(Workflow.id == Attempt.workflow_id).exists()
            | ~select(Node.id).where(Node.id == Attempt.node_id).exists())).scalar_one()


def admin_events(sessions: Any) -> list[Event]:
    """Every ADMIN_ACTION event, oldest first."""
    with sessions() as s:
        return list(s.scalars(select(Event).where(Event.type == "ADMIN_ACTION").order_by(Event.id)))


class AdminCli(Cli):
    """The command line, with archive roots under the test's directory."""

    def __init__(self, url: str, tmp: Path):
        super().__init__(url, tmp)
        self.archives = tmp / "archives"
        self.env["BROKER_ARCHIVE_ROOTS"] = str(self.archives)

    def archive(self, select_xml: str = "", *, delete_after: bool = False, keep: str = "", to: str | None = None,
                extra: tuple[str, ...] = ("--yes",), env: dict[str, str] | None = None) -> Any:
        """``broker admin archive --to ... --selection ...`` with a selection written for it."""
        path = self.file("selection.xml", selection(select_xml, delete_after=delete_after, keep=keep))
        return self("admin", "archive", "--to", to or self.archives.as_uri(), "--selection", str(path), *extra,
                    env=env)


def catalogue(tmp: Path, sshd) -> Path:
    """A catalogue with one SSH host, ``archive``: every broker user maps to the test account."""
    path = tmp / "hosts.xml"
    path.write_text(f'''<hosts xmlns="urn:workflow-broker:hosts:1.0" default="localhost">
  <host name="localhost" launcher="local"/>
  <host name="archive" launcher="ssh">
    <ssh address="{sshd.host}" port="{sshd.port}" knownHosts="{sshd.known_hosts}"/>
    <scratch>scratch</scratch>
    <account user="*" login="{sshd.user}" key="{sshd.key}"/>
  </host>
</hosts>
''')
    return path
