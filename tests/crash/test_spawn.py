"""kill -9 around a spawn: the fragment is recorded with the spawning node's result, so whatever the moment of
the kill, ``broker run`` again applies the spawn exactly once and runs each node once, on SQLite and PostgreSQL.

Crash points (broker/crashpoints.py): ``exit`` (the spawning payload ended, its result and fragment not yet
sent to the writer), ``spawn`` (the spawned rows are written, the transaction not committed), and
``launch-intent`` of a spawned node (the spawn is committed, its nodes are starting).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.persistence.models import Event
from tests.cli.helpers import DEADLINE, Cli, workflow

pytestmark = pytest.mark.slow  # every test here kills and restarts `broker run` processes

SPAWNED = ("a", "b", "c")


def _marker(markers: Path, name: str) -> str:
    return f'echo "$WB_NODE_PATH $WB_ATTEMPT" &gt;&gt; "{markers}/{name}"'


@pytest.fixture
def cli(migrated_url: str, tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(migrated_url, tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def _document(cli: Cli) -> Path:
    markers = cli.tmp / "markers"
    markers.mkdir()
    nodes = "".join(f'<node id="{n}">{"<dependsOn node=%r/>" % SPAWNED[i - 1] if i else ""}'
                    f'<payload type="sh">{_marker(markers, n)}</payload></node>'
                    for i, n in enumerate(SPAWNED))
    (cli.tmp / "more.xml").write_text(workflow(nodes, "more"))
    return cli.file("spawn.xml", workflow(f"""
        <node id="plan"><payload type="sh">{_marker(markers, "plan")}; cp "{cli.tmp}/more.xml" "$WB_WORKDIR/f.xml"
          echo "@broker spawn f.xml"</payload></node>
        <node id="after"><dependsOn node="plan"/><payload type="sh">{_marker(markers, "after")}</payload></node>"""))


def _spawn_events(cli: Cli) -> list[Event]:
    with cli.sessions() as s:
        return list(s.scalars(select(Event).where(Event.type == "NODE_SPAWNED")))


@pytest.mark.parametrize("point", ["exit:1", "spawn:1", "launch-intent:2"])
def test_a_kill_at_any_point_of_a_spawn_applies_it_exactly_once(cli: Cli, point: str):
    document = _document(cli)
    with open(cli.tmp / "run1.out", "w") as out:
        proc = subprocess.Popen(cli.args("run", str(document)), env={**cli.env, "BROKER_TEST_CRASH": point},
                                cwd=cli.tmp, stdout=out, stderr=subprocess.STDOUT)
        proc.wait(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL, (cli.tmp / "run1.out").read_text()
    nodes = cli.nodes()
    committed = point.startswith("launch-intent")
    # before the commit nothing of the spawn exists; after it, all of it
    assert {p for p in nodes if p.startswith("plan/")} == ({f"plan/{n}" for n in SPAWNED} if committed else set())
    assert len(_spawn_events(cli)) == int(committed)
    assert (cli.tmp / "markers" / "plan").read_text().splitlines() == ["plan 1"]

    again = cli("run", str(document))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("resuming workflow ")
    nodes = cli.nodes()
    assert {p: n.state for p, n in nodes.items()} == {
        "plan": "succeeded", "after": "succeeded", **{f"plan/{n}": "succeeded" for n in SPAWNED}}
    assert nodes["plan"].members == 3 and nodes["plan"].attempt == 1
    # the spawning payload's result was taken from its work directory, not run again
    for name in ("plan", "after", *SPAWNED):
        path = name if name in ("plan", "after") else f"plan/{name}"
        assert (cli.tmp / "markers" / name).read_text().splitlines() == [f"{path} 1"]
    events = _spawn_events(cli)
    assert len(events) == 1 and events[0].properties == {"nodes": 3, "file": "f.xml", "attempt": 1}
