"""A workflow whose nodes record every run, and a ``broker run`` the tests kill with SIGKILL and run again.

The workflow (:func:`crash_workflow`) has a chain, a fan with a join, a sweep of two-node members and a sweep
whose members hold a nested sweep, 72 execute nodes in all. Every payload appends ``<node path> <attempt>``
to a marker file of its own, then works for :data:`WORK` seconds, so a node that ran twice shows as a second
line. :class:`Crashes` starts ``broker run`` (at most 4 nodes in flight), kills it, runs it again, and checks
the end state against the database and the markers.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text

from broker.ids import path_to_dirname
from broker.persistence.db import make_engine
from broker.states import IN_FLIGHT, TERMINAL
from tests.cli.helpers import DEADLINE, Cli, alive
from tests.fixtures import wait_for

#: links of the chain, branches of the fan, members of ``scan``, members of ``grid``, members of each ``seeds``
CHAIN, FAN, SCAN, SIZES, SEEDS = 10, 20, 12, 3, 4
#: execute nodes: root, chain, fan, join, scan (a, b per member), grid (prep + seeds' runs per member), last
EXECUTE = 1 + CHAIN + FAN + 1 + 2 * SCAN + SIZES * (1 + SEEDS) + 1
#: every parameterized node once expanded, with its number of members
SWEEPS = {"scan": SCAN, "grid": SIZES, **{f"grid[{i}]/seeds": SEEDS for i in range(SIZES)}}
#: node rows before any expansion: the execute nodes outside sweeps, and the two top-level sweeps
UNEXPANDED_ROWS = 1 + CHAIN + FAN + 1 + 1 + 2
#: node rows an expansion adds per member (the member and its body), by sweep id
ROWS_PER_MEMBER = {"scan": 3, "grid": 3, "seeds": 2}
#: seconds each payload works: long enough that kills land while payloads run, short enough for the suite
WORK = 0.02
#: most nodes in flight at once (the issue's benchmark setting; keeps some nodes waiting at every kill)
MAX_IN_FLIGHT = 4
#: seconds between two looks at the database while waiting to kill (the kill lands within a node or two)
POLL = 0.002


def _in(states: frozenset) -> str:
    return ", ".join(f"'{state}'" for state in sorted(states))


#: execute nodes that ended, and execute nodes in flight, in one query
_CENSUS = text(f"SELECT count(CASE WHEN state IN ({_in(TERMINAL)}) THEN 1 END), "
               f"count(CASE WHEN state IN ({_in(IN_FLIGHT)}) THEN 1 END) FROM nodes WHERE kind = 'node'")


def marker_name(path: str) -> str:
    """The marker file name of a node path: the payload maps ``/[]`` to ``._-`` with ``tr`` (ids use none)."""
    return path.translate(str.maketrans("/[]", "._-"))


def expected_rows(expanded: dict[str, int]) -> int:
    """How many node rows the workflow has once exactly the sweeps ``expanded`` (id -> members) expanded."""
    return UNEXPANDED_ROWS + sum(members * ROWS_PER_MEMBER[sweep.rsplit("/", 1)[-1]]
                                 for sweep, members in expanded.items())


def crash_workflow(markers: Path) -> str:
    """The test workflow; each payload appends ``$WB_NODE_PATH $WB_ATTEMPT`` to its marker in ``markers``."""
    payload = (f'<payload type="sh">m="{markers}/$(printf %s "$WB_NODE_PATH" | tr "/[]" "._-")"; '
               f'echo "$WB_NODE_PATH $WB_ATTEMPT" &gt;&gt; "$m"; sleep {WORK}</payload>')

    def node(name: str, *parents: str) -> str:
        return f'<node id="{name}">{"".join(f"<dependsOn node={p!r}/>" for p in parents)}{payload}</node>'

    parts = [node("root")]
    parts += [node(f"c{i}", f"c{i - 1}" if i > 1 else "root") for i in range(1, CHAIN + 1)]
    parts += [node(f"f{i}", "root") for i in range(1, FAN + 1)]
    parts.append(node("join", *(f"f{i}" for i in range(1, FAN + 1))))
    parts.append(f'<sweep id="scan"><dependsOn node="root"/><param name="i"><range from="1" to="{SCAN}"/></param>'
                 f'<body>{node("a")}{node("b", "a")}</body></sweep>')
    parts.append(f'<sweep id="grid"><dependsOn node="root"/>'
                 f'<param name="size"><range from="1" to="{SIZES}"/></param><body>{node("prep")}'
                 f'<sweep id="seeds"><dependsOn node="prep"/><param name="seed"><range from="1" to="{SEEDS}"/>'
                 f'</param><body>{node("run")}</body></sweep></body></sweep>')
    parts.append(node("last", f"c{CHAIN}", "join", "scan", "grid"))
    return ('<workflow xmlns="urn:workflow-broker:workflow:1.0" name="crash">\n' + "\n".join(parts)
            + "\n</workflow>\n")


@dataclass(frozen=True)
class Death:
    """What the database held right after a kill."""

    #: execute nodes that had ended
    done: int
    #: execute nodes holding a slot (launch intent committed, running, staging)
    in_flight: int
    #: the workflow's state
    state: str


class Crashes:
    """``broker run`` of the test workflow on one database: started, killed, run again, and checked."""

    def __init__(self, cli: Cli):
        self.cli = cli
        self.markers = cli.tmp / "markers"
        self.markers.mkdir()
        self.file = cli.file("crash.xml", crash_workflow(self.markers))
        cli.env["BROKER_ENGINE_MAX_IN_FLIGHT"] = str(MAX_IN_FLIGHT)
        self._db = make_engine(cli.url)
        self._runs = 0
        self._procs: list[subprocess.Popen] = []

    # ----------------------------------------------------------------------------------------- runs

    def start(self, crash: str | None = None) -> subprocess.Popen:
        """Start ``broker run`` in the background (with ``BROKER_TEST_CRASH=crash`` if given)."""
        self._runs += 1
        env = dict(self.cli.env)
        if crash:
            env["BROKER_TEST_CRASH"] = crash
        # output to files, not pipes: nobody reads a killed run's output, and a full pipe would stall it
        with open(self.cli.tmp / f"run{self._runs}.out", "w") as out, \
                open(self.cli.tmp / f"run{self._runs}.err", "w") as err:
            proc = subprocess.Popen(self.cli.args("run", str(self.file)), env=env, cwd=self.cli.tmp,
                                    stdout=out, stderr=err)
        self._procs.append(proc)
        return proc

    def output(self, run: int) -> str:
        """The standard output and error of run number ``run`` (from 1), for failure messages."""
        return "\n".join((self.cli.tmp / f"run{run}.{kind}").read_text() for kind in ("out", "err"))

    def kill_at(self, fraction: float, proc: subprocess.Popen | None = None) -> Death:
        """Start a run (or take ``proc``), SIGKILL it once ``fraction`` of the execute nodes ended."""
        proc = proc or self.start()
        target = -(-int(fraction * 100) * EXECUTE // 100)  # ceil, in integers

        def due() -> bool:
            # also wait for a payload to run: at the end of the chain, a node may be between two attempts
            done, flying = self.census()
            return done >= target and flying > 0

        wait_for(lambda: proc.poll() is not None or due(), interval=POLL,
                 what=f"{target} of {EXECUTE} nodes to end")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
        assert proc.returncode == -signal.SIGKILL, (
            f"the broker ended on its own (exit {proc.returncode}) before {target} nodes were done:\n"
            + self.output(self._runs))
        return self.death()

    def crash_at(self, point: str) -> Death:
        """Run with crash point ``point`` (``name:n``); the broker must kill itself there."""
        proc = self.start(crash=point)
        proc.wait(timeout=DEADLINE)
        assert proc.returncode == -signal.SIGKILL, (
            f"the broker never reached crash point {point} (exit {proc.returncode}):\n" + self.output(self._runs))
        return self.death()

    def death(self) -> Death:
        """The database's view right after a kill (it holds exactly what the dead broker committed)."""
        (state,) = [w.state for w in self.cli.workflows()]
        done, flying = self.census()
        return Death(done=done, in_flight=flying, state=state)

    def rerun(self) -> subprocess.CompletedProcess[str]:
        """Run the same file again to its end: it must resume the workflow and succeed."""
        result = self.cli("run", str(self.file))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("resuming workflow "), result.stdout
        return result

    def census(self) -> tuple[int, int]:
        """Execute nodes that have ended, and those in flight (one light query: the kill waits on it)."""
        with self._db.connect() as conn:
            return tuple(conn.execute(_CENSUS).one())

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=DEADLINE)
        self._db.dispose()

    # --------------------------------------------------------------------------------------- checks

    def nodes(self) -> dict[str, Any]:
        return self.cli.nodes()

    def attempt_dir(self, path: str, attempt: int) -> Path:
        """Where the broker puts an attempt's work directory (known before the database records it)."""
        (wf,) = self.cli.workflows()
        return self.cli.workdir / wf.global_id / path_to_dirname(path) / str(attempt)

    def lines(self, path: str) -> list[str]:
        """The lines of a node's marker file (one per run of its payload)."""
        marker = self.markers / marker_name(path)
        return marker.read_text().splitlines() if marker.exists() else []

    def assert_every_node_ran_once(self) -> None:
        """One workflow, succeeded; every sweep expanded once; every execute node succeeded at attempt 1 and
        its marker holds exactly the line of that attempt; no payload process left behind."""
        (wf,) = self.cli.workflows()
        assert wf.state == "succeeded"
        nodes = self.nodes()
        execute = {path: n for path, n in nodes.items() if n.kind == "node"}
        assert len(execute) == EXECUTE
        assert {p: n.state for p, n in execute.items() if n.state != "succeeded"} == {}
        ids = {n.id: path for path, n in nodes.items()}
        for sweep, members in SWEEPS.items():
            assert nodes[sweep].members == members, sweep
            got = sorted(n.member_index for n in nodes.values() if n.kind == "member" and ids[n.parent_id] == sweep)
            assert got == list(range(members)), sweep
        assert len(nodes) == expected_rows(SWEEPS) == EXECUTE + len(SWEEPS) + sum(SWEEPS.values())
        # a payload that ran twice leaves two lines; a crash must not cost a node a second attempt either
        ran = {p: self.lines(p) for p in execute}
        assert {p: lines for p, lines in ran.items() if lines != [f"{p} {execute[p].attempt}"]} == {}
        assert {p: n.attempt for p, n in execute.items() if n.attempt != 1} == {}
        assert sorted(os.listdir(self.markers)) == sorted(marker_name(p) for p in execute)
        leftovers = [n.job_id for n in execute.values() if n.job_id and alive(int(n.job_id))]
        assert leftovers == [], "payload processes still alive after the workflow ended"
