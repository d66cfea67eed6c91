"""The live progress display of ``broker run`` and the summary table it prints at the end.

The engine calls :class:`Tracker` in its writer thread after every commit; the tracker only stores a
snapshot and sets an event. The main thread renders (:class:`Display`): on a terminal one status line
redrawn about five times a second, otherwise a plain log line every few seconds and at every workflow
state change. Nothing here touches the database except :func:`print_summary`.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from broker.cli.common import done_total, duration, ordered_counts, plural, print_table, terminal_width
from broker.printable import printable

#: seconds between redraws of the terminal status line
TTY_INTERVAL = 0.2
#: seconds between plain progress lines when the output is not a terminal
PLAIN_INTERVAL = 5.0
#: nodes that did not succeed listed in the summary before "and N more"
SUMMARY_NODES = 20
#: the node states the summary lists: every way of not succeeding
NOT_SUCCEEDED = ("failed", "cancelled", "skipped")
#: seconds between two estimates from history (each reads the database: the bounded reads of
#: broker.persistence.estimates)
ESTIMATE_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A workflow's state and node counts as of one commit."""

    state: str
    counts: dict[str, int] = field(default_factory=dict)


class Tracker:
    """The engine listener: keeps the latest snapshot of each workflow for the main thread to render."""

    def __init__(self) -> None:
        #: set when a workflow's state changes: the main thread waits on it between redraws (not on every
        #: commit, which would make it redraw as often as the writer commits)
        self.changed = threading.Event()
        # plain dict/deque operations: atomic in CPython, so the writer thread never waits on a lock here
        self._latest: dict[int, Snapshot] = {}
        self._changes: dict[int, deque[Snapshot]] = {}

    def __call__(self, workflow_id: int, global_id: str, state: Any, counts: dict[str, int]) -> None:
        snapshot = Snapshot(str(state), dict(counts))
        previous = self._latest.get(workflow_id)
        self._latest[workflow_id] = snapshot
        if previous is None or previous.state != snapshot.state:
            self._changes.setdefault(workflow_id, deque()).append(snapshot)
            self.changed.set()

    def latest(self, workflow_id: int) -> Snapshot | None:
        """The last snapshot of a workflow, None before its first commit."""
        return self._latest.get(workflow_id)

    def state_changes(self, workflow_id: int) -> list[Snapshot]:
        """Snapshots at which the workflow's state changed since the last call (oldest first)."""
        queue = self._changes.get(workflow_id)
        out = []
        while queue:
            out.append(queue.popleft())
        return out


def clock(seconds: float) -> str:
    """Elapsed time as ``m:ss`` or ``h:mm:ss``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display:
    """Renders snapshots of one workflow on ``stream`` (a terminal line, or plain lines)."""

    def __init__(self, stream: TextIO, *, tty: bool, done_before: int = 0):
        self.stream = stream
        self.tty = tty
        #: seconds the main thread may wait between two calls of :meth:`update`
        self.interval = TTY_INTERVAL
        self.started = time.monotonic()
        # nodes already done when this command started (a resume): not part of this run's rate
        self._done_before = done_before
        self._last_plain = 0.0
        self._drawn = False
        #: seconds left (p10, p50, p90) as of the monotonic time it was estimated: (time, Interval), or None
        self.estimate: tuple[float, Any] | None = None

    # ------------------------------------------------------------------------------------------ lines

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self, done: int) -> float:
        """Nodes finished per second during this run."""
        elapsed = self.elapsed()
        return max(0, done - self._done_before) / elapsed if elapsed > 0 else 0.0

    def set_estimate(self, remaining: Any) -> None:
        """An estimate from history (broker.estimates.Interval of seconds left, None when there is none)."""
        self.estimate = None if remaining is None else (time.monotonic(), remaining)

    def _eta(self, rate: float, left: int) -> str:
        """``ETA 0:16 (0:12-0:25)`` from history, or ``ETA 0:16`` from this run's rate alone."""
        if self.estimate is not None:
            since = time.monotonic() - self.estimate[0]
            iv = self.estimate[1]
            return (f"ETA {clock(max(0.0, iv.p50 - since))} ({clock(max(0.0, iv.p10 - since))}-"
                    f"{clock(max(0.0, iv.p90 - since))})")
        return f"ETA {clock(left / rate)}" if rate > 0 else ""

    def line(self, snapshot: Snapshot | None) -> str:
        """``[0:12] running  10/46 done  succeeded 10, running 4, waiting 32  2.30 nodes/s  ETA 0:16 (0:12-0:25)``:
        the ETA's interval (p10-p90) comes from earlier runs of the workflow when there are any."""
        head = f"[{clock(self.elapsed())}]"
        if snapshot is None:
            return f"{head} starting"
        done, total = done_total(snapshot.counts)
        counts = ", ".join(f"{state} {n}" for state, n in ordered_counts(snapshot.counts))
        parts = [head, snapshot.state, f"{done}/{total} done", counts]
        rate = self.rate(done)
        if rate > 0:
            parts.append(f"{rate:.2f} nodes/s")
        if total > done and snapshot.state in ("accepted", "running"):
            parts.append(self._eta(rate, total - done))
        return "  ".join(p for p in parts if p)

    # ---------------------------------------------------------------------------------------- render

    def update(self, snapshot: Snapshot | None, state_changes: Sequence[Snapshot] = ()) -> None:
        """Redraw (terminal), or print a line per state change and one every few seconds (plain)."""
        if self.tty:
            self._draw(self.line(snapshot))
            return
        now = time.monotonic()
        for change in state_changes:
            self._plain(self.line(change))
            self._last_plain = now
        if now - self._last_plain >= PLAIN_INTERVAL:
            self._plain(self.line(snapshot))
            self._last_plain = now

    def note(self, text: str) -> None:
        """Print a message line (above the status line on a terminal)."""
        self.clear()
        self.stream.write(printable(text) + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the terminal status line, so what follows starts on a clean line."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def _draw(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        # one character short of the width: a full line would wrap on some terminals and break the redraw
        self.stream.write("\r" + text[: max(10, width - 1)] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _plain(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# ----------------------------------------------------------------------------------------------- summary

def print_summary(sessions: Any, workflow_id: int, *, wall: float, done_before: int, out: TextIO) -> str:
    """Print the end-of-run summary of a workflow (state counts, wall time, rate, failed and skipped nodes).

    Returns the workflow's state.
    """
    from sqlalchemy import func, select

    from broker.cli.common import counted_clause, node_counts
    from broker.persistence.models import Node, Workflow

    with sessions() as s:
        wf = s.get(Workflow, workflow_id)
        counts = node_counts(s, [workflow_id])[workflow_id]
        bad_filter = (Node.workflow_id == workflow_id, Node.state.in_(NOT_SUCCEEDED), counted_clause())
        bad = s.execute(select(Node.path, Node.state, Node.exit_code, Node.message).where(*bad_filter)
                        .order_by(Node.id).limit(SUMMARY_NODES)).all()
        bad_total = s.execute(select(func.count()).select_from(Node).where(*bad_filter)).scalar_one()
    done, total = done_total(counts)
    ran = max(0, done - done_before)
    rate = ran / wall if wall > 0 else 0.0
    out.write(f"workflow {wf.global_id} ({printable(wf.name)}): {wf.state}\n")
    rows: list[tuple[Any, ...]] = [(state, n) for state, n in ordered_counts(counts)]
    rows.append(("total", f"{plural(total, 'node')}, {done} done"))
    rows.append(("wall time", duration(wall)))
    rows.append(("rate", f"{rate:.2f} nodes/s ({ran} finished in this run)"))
    print_table(("", ""), rows, out=_Indented(out))
    if bad:
        out.write("\nnodes that did not succeed:\n")
        print_table(("NODE", "STATE", "EXIT", "MESSAGE"),
                    [(r.path, r.state, "" if r.exit_code is None else r.exit_code, r.message) for r in bad],
                    out=_Indented(out), wrap_last=True, width=terminal_width() - len(_Indented.MARGIN))
        if bad_total > len(bad):
            out.write(f"  and {bad_total - len(bad)} more (broker status {wf.global_id} --nodes all)\n")
    out.flush()
    return wf.state


def planned_total(s: Any, workflow_id: int, counts: dict[str, int]) -> tuple[int, str]:
    """(nodes the workflow will run, a note or "") from its node ``counts``: each parameterized node not
    expanded yet counts what its description expands it to, not 1 (see broker.description.counts)."""
    from sqlalchemy import select

    from broker.description.counts import Planned, execute_nodes, output_driven, sweeps_by_template
    from broker.description.model import from_json
    from broker.persistence.models import Node, Workflow

    total = sum(counts.values())
    pending = s.execute(select(Node.template).where(Node.workflow_id == workflow_id, Node.kind == "sweep",
                                                    Node.members.is_(None))).scalars().all()
    if not pending:
        return total, ""
    sweeps = sweeps_by_template(from_json(s.get(Workflow, workflow_id).plan).nodes)
    driven: list[str] = []
    for template in pending:
        sweep = sweeps[template]
        # the row counted 1; once expanded it is its members' execute nodes
        total += execute_nodes((sweep,)) - 1
        driven.extend(output_driven((sweep,), template.rpartition("/")[0]))
    return total, Planned(total, tuple(dict.fromkeys(driven))).note()


class _Indented:
    """A stream wrapper that indents every line by two spaces (drops print_table's empty header line)."""

    MARGIN = "  "

    def __init__(self, out: TextIO):
        self.out = out

    def write(self, text: str) -> None:
        if text.strip():
            self.out.write(self.MARGIN + text)
