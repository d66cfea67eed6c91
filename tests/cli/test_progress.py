"""The progress display (tracker, status line, plain lines) and the summary's truncation."""

from __future__ import annotations

import io
import threading
import time

import pytest

from broker.cli.progress import PLAIN_INTERVAL, Display, Snapshot, Tracker, clock
from broker.states import WorkflowState
from tests.cli.helpers import workflow


def test_the_tracker_keeps_the_latest_snapshot_and_wakes_the_main_thread_only_on_state_changes():
    tracker = Tracker()
    tracker(7, "wf-x", WorkflowState.ACCEPTED, {"ready": 1})
    assert tracker.changed.is_set()
    tracker.changed.clear()
    writer = threading.Thread(target=tracker, args=(7, "wf-x", WorkflowState.ACCEPTED, {"queued": 1}))
    writer.start()
    writer.join()
    assert not tracker.changed.is_set()
    assert tracker.latest(7) == Snapshot("accepted", {"queued": 1})
    tracker(7, "wf-x", WorkflowState.RUNNING, {"running": 1})
    assert tracker.changed.is_set()
    assert [s.state for s in tracker.state_changes(7)] == ["accepted", "running"]
    assert tracker.state_changes(7) == []
    assert tracker.latest(8) is None


def test_the_status_line_shows_counts_done_rate_and_eta():
    display = Display(io.StringIO(), tty=False, done_before=2)
    display.started = time.monotonic() - 10  # ten seconds into the run
    line = display.line(Snapshot("running", {"waiting": 10, "succeeded": 22, "running": 4, "failed": 2}))
    head, rest = line.split("  ", 1)
    assert head in ("[0:10]", "[0:11]")
    assert rest.startswith("running  24/38 done  succeeded 22, failed 2, running 4, waiting 10  2.")
    assert " nodes/s  ETA 0:0" in rest
    assert display.line(None).endswith("starting")
    assert "ETA" not in display.line(Snapshot("succeeded", {"succeeded": 38}))


def test_plain_progress_prints_each_state_change_and_otherwise_every_few_seconds():
    out = io.StringIO()
    display = Display(out, tty=False)
    display.update(Snapshot("running", {"running": 1}), [Snapshot("accepted", {"ready": 1}),
                                                         Snapshot("running", {"running": 1})])
    display.update(Snapshot("running", {"running": 1}), [])
    assert len(out.getvalue().splitlines()) == 2
    display._last_plain -= PLAIN_INTERVAL  # as if the interval had passed
    display.update(Snapshot("running", {"succeeded": 1, "running": 1}), [])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "1/2 done" in lines[2]


def test_on_a_terminal_the_line_is_redrawn_and_cleared():
    out = io.StringIO()
    display = Display(out, tty=True)
    display.update(Snapshot("running", {"running": 1}))
    display.update(Snapshot("running", {"succeeded": 1}))
    display.note("cancelling...")
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\x1b[K") == 3
    assert text.endswith("\r\x1b[Kcancelling...\n")


def test_clock_formats_minutes_and_hours():
    assert (clock(5), clock(65), clock(3 * 3600 + 62)) == ("0:05", "1:05", "3:01:02")


@pytest.mark.slow
def test_the_summary_lists_the_first_twenty_failed_nodes_then_how_many_more(sqlite_cli):
    nodes = "\n".join(f'<node id="bad{i:02d}"><payload type="sh">exit 1</payload></node>' for i in range(23))
    result = sqlite_cli("run", str(sqlite_cli.file("bad.xml", workflow(nodes))))
    assert result.returncode == 1
    table = result.stdout.split("nodes that did not succeed:\n", 1)[1].splitlines()
    assert len(table) == 1 + 20 + 1
    (wf,) = sqlite_cli.workflows()
    assert table[-1] == f"  and 3 more (broker status {wf.global_id} --nodes all)"
