"""``broker cancel ID`` and ``broker restart ID``: change work, whether or not a broker is running.

With a running broker (it holds the database lock), the command goes through the one control path: a row
in the ``control`` table, which the broker applies within a second; the command waits for that (up to
``--wait`` seconds, exit 3 if it is not applied in time). With no broker, the command takes the lock and
applies the change itself: a cancel kills the in-flight local attempts (found through the local launcher's
recovery) and marks them cancelled; a restart puts the nodes back to waiting, to be run by
``broker resume ID``. Unknown ID: exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.cli import EXIT_ERROR, EXIT_OK, add_db_option
from broker.printable import printable
from broker.cli.common import (DONE_STATES, IN_FLIGHT_STATES, Target, not_found_is_usage, owner_name, plural,
                               reader, resolve)

#: seconds to wait for a running broker to apply a command
APPLY_TIMEOUT = 10.0
#: seconds between reads of the control row while waiting
APPLY_POLL = 0.1
#: seconds to wait for a killed payload to exit (the launcher's SIGTERM grace, then SIGKILL, plus margin)
KILL_TIMEOUT = 30.0
#: node states a restart gives a fresh attempt: every end but success
AGAIN_STATES = tuple(state for state in DONE_STATES if state != "succeeded")


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add the ``cancel`` and ``restart`` commands."""
    cancel = subparsers.add_parser(
        "cancel", parents=[common], help="cancel a workflow or a node",
        description="Cancel a workflow or one node (its dependants are skipped). A running broker applies it "
                    "within a second; with none running, in-flight payloads are killed here. Exit 2: unknown "
                    "ID; 3: a running broker did not apply it in time.")
    restart = subparsers.add_parser(
        "restart", parents=[common], help="give failed, cancelled and skipped nodes a fresh attempt",
        description="Restart the failed, cancelled and skipped nodes of a workflow, or one node and its "
                    "dependants. A running broker runs them at once; otherwise `broker resume ID` runs them. "
                    "Exit 2: unknown ID; 3: a running broker did not apply it in time.")
    for parser, handler in ((cancel, cancel_command), (restart, restart_command)):
        parser.add_argument("id", metavar="ID", help="workflow global id (wf-...), node global id, or number")
        add_db_option(parser)
        parser.add_argument("--wait", type=float, default=APPLY_TIMEOUT, metavar="SECONDS",
                            help=f"how long to wait for a running broker to apply it (default {APPLY_TIMEOUT:g})")
        parser.set_defaults(func=handler)


@not_found_is_usage
def cancel_command(args: argparse.Namespace, settings: Any) -> int:
    """Cancel a workflow or node, through the running broker or directly."""
    return _change(args, settings, "cancel")


@not_found_is_usage
def restart_command(args: argparse.Namespace, settings: Any) -> int:
    """Restart a workflow's (or a node's) failed, cancelled and skipped nodes."""
    return _change(args, settings, "restart")


def _change(args: argparse.Namespace, settings: Any, command: str) -> int:
    from broker.errors import BrokerLocked
    from broker.persistence.lock import BrokerLock

    actor = f"user:{owner_name(settings)}"
    with reader(settings) as sessions:
        with sessions() as s:
            target = resolve(s, args.id)
            before = _before(s, target)
        nothing = _nothing_to_do(command, target, before)
        if nothing:
            print(printable(nothing))
            return EXIT_OK
        lock = BrokerLock(settings.database_url(), settings.engine, role=f"broker {command}")
        try:
            lock.acquire()
        except BrokerLocked:
            return _through_broker(sessions, command, target, actor, before, args.wait)
        try:
            return _directly(sessions, settings, command, target, actor, before)
        finally:
            lock.release()


@dataclass(frozen=True, slots=True)
class Before:
    """What the target looked like before the command: for the messages, and to tell if there is work."""

    #: the node's state, or the workflow's for a workflow target
    state: str
    #: work-carrying nodes in flight, and in a state a restart brings back, within the target
    in_flight: int
    again: int


def _before(s: Any, target: Target) -> Before:
    from sqlalchemy import func, select

    from broker.cli.common import counted_clause
    from broker.persistence.models import Node, Workflow

    wf_state = s.get(Workflow, target.workflow_id).state
    scope = [Node.workflow_id == target.workflow_id, counted_clause()]
    if target.node_path is not None:
        node = s.get(Node, target.node_id)
        # the node itself, or every node inside it when it is a group (an expanded sweep or a member)
        scope.append((Node.id == node.id) | Node.path.startswith(node.path + "/", autoescape=True)
                     | Node.path.startswith(node.path + "[", autoescape=True))
        state = node.state
    else:
        state = wf_state

    def count(states: tuple[str, ...]) -> int:
        return s.execute(select(func.count()).select_from(Node).where(*scope, Node.state.in_(states))).scalar_one()

    return Before(state, count(IN_FLIGHT_STATES), count(AGAIN_STATES))


def _nothing_to_do(command: str, target: Target, before: Before) -> str | None:
    """The message to print when the command would change nothing, else None."""
    if command == "cancel" and before.state in DONE_STATES:
        return f"{target.what} has already ended ({before.state}): nothing to cancel"
    if command == "restart" and before.again == 0:
        return f"{target.what} has no failed, cancelled or skipped nodes: nothing to restart"
    return None


# ------------------------------------------------------------------------------------ through the broker

def _through_broker(sessions: Any, command: str, target: Target, actor: str, before: Before,
                    wait: float) -> int:
    """Queue the command in the control table and wait until the running broker has applied it."""
    from broker.persistence import control

    with sessions.begin() as s:
        control_id = control.request(s, command, target.global_id, actor)
    deadline = time.monotonic() + wait
    while True:
        with sessions() as s:
            applied, result = control.applied(s, control_id)
        if applied:
            break
        if time.monotonic() >= deadline:
            print(printable(f"broker: the running broker has not applied the {command} of {target.what} within "
                            f"{wait:g} s (control request {control_id} stays queued: it will be applied when the "
                            "broker reads it)"), file=sys.stderr)
            return EXIT_ERROR
        time.sleep(APPLY_POLL)  # a poll interval: the broker reads the control table a few times a second
    if result != "applied":
        print(printable(f"broker: the running broker could not {command} {target.what}: {result}"), file=sys.stderr)
        return EXIT_ERROR
    print(printable(_done_message(command, target, before, running_broker=True)))
    return EXIT_OK


def _done_message(command: str, target: Target, before: Before, *, running_broker: bool) -> str:
    if command == "cancel":
        running = f" ({plural(before.in_flight, 'node')} {'was' if before.in_flight == 1 else 'were'} running)"
        return f"cancelled {target.what}{running if before.in_flight else ''}"
    again = plural(before.again, "node")
    if running_broker and target.node_path is not None:
        # counted before the broker applied it: the dependants it brings back are not known here
        return f"restarted {target.what} and the dependants it held back (the running broker runs them)"
    if running_broker:
        return f"restarted {target.what}: {again} will run again (the running broker runs them)"
    return (f"restarted {target.what}: {again} will run again; run `broker resume {target.workflow_global_id}` "
            "to run them")


# ------------------------------------------------------------------------------------------- directly

def _directly(sessions: Any, settings: Any, command: str, target: Target, actor: str, before: Before) -> int:
    """Apply the change with the store, holding the broker lock; kill in-flight attempts for a cancel."""
    from broker.errors import StateError
    from broker.persistence.changes import CancelNodes, CancelWorkflow, Rejected, Restart
    from broker.persistence.store import Store

    store = Store(sessions, limits=settings.limits, publishing=settings.events.publishing)
    # a marker to find the store's answer among its replies (it hands them back instead of sending them)
    reply = object()
    node_ids = None if target.node_id is None else (target.node_id,)
    if command == "cancel":
        change: Any = (CancelWorkflow(target.workflow_id, actor, reply_to=reply) if node_ids is None
                       else CancelNodes(node_ids, actor, reply_to=reply))
    else:
        change = Restart(target.workflow_id, actor, node_ids, reply_to=reply)
    out = store.commit([change])
    for to, answer in out.replies:
        if to is reply and isinstance(answer, Rejected):
            raise StateError(f"cannot {command} {target.what}: {answer.reason}")
    if command == "cancel" and out.committed.kill:
        _kill(store, sessions, settings, out.committed.kill, actor)
    if command == "restart":
        # the exact number: a node's restart also brings back the dependants it had caused to be skipped
        restarted = {m.node_id for m in out.committed.moved if m.new.value == "waiting"}
        before = dataclasses.replace(before, again=len(restarted))
    print(printable(_done_message(command, target, before, running_broker=False)))
    return EXIT_OK


def _kill(store: Any, sessions: Any, settings: Any, kill: tuple[tuple[int, int], ...], actor: str) -> None:
    """Kill in-flight local attempts left by a broker that is gone, then mark them cancelled.

    An attempt whose payload ended by itself before the kill (its verdict says so) is not cancelled: it
    stays in flight, and the next broker (``broker resume``) takes its result, as for any finished attempt.
    """
    from sqlalchemy import select

    from broker.config import default_state_dir
    from broker.ids import path_to_dirname
    from broker.launchers.agentlocal import AgentLauncher
    from broker.persistence.changes import Transition
    from broker.persistence.models import Node, Workflow
    from broker.states import NodeState

    with sessions() as s:
        rows = {r.id: r for r in s.execute(
            select(Node.id, Node.workdir, Node.job_id, Node.path, Workflow.global_id)
            .join(Workflow, Workflow.id == Node.workflow_id)
            .where(Node.id.in_([node_id for node_id, _ in kill])))}
    # a queued attempt may have started before its work directory was recorded: look where the engine puts it
    # (the configured root; a `broker run --workdir` elsewhere is not known here)
    root = Path(settings.engine.workdir or default_state_dir() / "work").absolute()
    transitions = []
    # per work root, as the attempts' resident agents keep their sockets there (<root>/.agents); an agent's
    # launcher also stops an attempt a wb-run.sh wrapper runs, whatever [hosts] local_agent says now
    launchers: dict[Path, Any] = {}
    try:
        for node_id, attempt in kill:
            row = rows[node_id]
            relative = Path(row.global_id, path_to_dirname(row.path), str(attempt))
            workdir = row.workdir or str(root / relative)
            # the root of a recorded work directory: where that run (`broker run --workdir` too) kept its agents
            parts = Path(workdir).parts
            base = Path(*parts[:-len(relative.parts)]) if parts[-len(relative.parts):] == relative.parts else root
            if base not in launchers:
                launchers[base] = AgentLauncher.of_work_root(base)
            found, ended_first = _stop_attempt(launchers[base], node_id, attempt, workdir, row.job_id)
            if ended_first:
                print(f"node {row.path}: {found}; `broker resume {row.global_id}` takes its result")
                continue
            transitions.append(Transition(node_id=node_id, to=NodeState.CANCELLED, actor=actor, attempt=attempt,
                                          message=f"cancelled by {actor} ({found})"))
    finally:
        for launcher in launchers.values():
            launcher.close()
    store.commit(transitions)


def _stop_attempt(launcher: Any, node_id: int, attempt: int, workdir: str, job_id: str | None) -> tuple[str, bool]:
    """Kill one attempt if it still runs and wait for its end: (what was found, for the node's message; whether
    its payload ended by itself before the kill, so that its result stands)."""
    from broker.launchers import base

    found = launcher.recover(node_id, attempt, workdir, job_id)
    if found.status != "running" or found.handle is None:
        if found.status == "finished" and found.result.outcome != base.CANCELLED:
            return f"its payload ended by itself before the kill ({found.result.message})", True
        if found.result is not None and found.result.message:
            return f"its payload had ended meanwhile: {found.result.message}", False
        return "its payload was not running", False
    ended = threading.Event()
    launcher.watch(found.handle, lambda *_: ended.set())
    launcher.cancel(found.handle)
    if not ended.wait(KILL_TIMEOUT):
        return (f"its payload (process group {found.handle.job_id}) did not end within {KILL_TIMEOUT:g} s of the "
                "kill"), False
    result = launcher.collect(found.handle)
    if result.outcome != base.CANCELLED:
        # its exit status came first (the verdict), so nothing was sent
        return f"its payload ended by itself before the kill ({result.message})", True
    return f"its payload (process group {found.handle.job_id}) was killed", False
