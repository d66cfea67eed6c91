"""updateNodeStatus: the push channel of elves running where the broker cannot watch them.

Accepted status strings (the keyword in any case, then arguments separated by spaces)::

    RUNNING [message]                 the attempt started (queued -> running)
    PROGRESS <percent> [message]      progress, 0 to 100 (a decimal number)
    OUTPUT                            only the output properties of the call (also: an empty status)
    SUCCEEDED [exit code] [message]   the payload succeeded (then stage-out, if the node has any)
    FAILED [exit code] [message]      the payload failed (retried if the node's policy allows)
    CANCELLED [message]               the payload was cancelled

Output properties travel in ``output[]``: ``name`` matches ``[A-Za-z_][A-Za-z0-9_]{0,63}`` and ``value`` is
JSON text (anything else is kept as a JSON string), at most ``[limits] max_output_bytes`` bytes.

Every call is idempotent: a status the node already has, a report for an attempt that is no longer
current (stale), and a report on a finished node are ignored without a fault. A call that changes the
state returns after the change is committed; a progress or output report is handed to the writer and is
committed with its next batch.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from broker.api.context import COMMIT_TIMEOUT, ApiContext
from broker.api.sessions import ElfIdentity
from broker.errors import BrokerError, ConfigError, LimitExceeded
from broker.events.types import EventType
from broker.persistence import changes as c
from broker.persistence.models import Event, Node
from broker.states import TERMINAL, NodeState

log = logging.getLogger(__name__)

N = NodeState
STATUSES = ("RUNNING", "PROGRESS", "OUTPUT", "SUCCEEDED", "FAILED", "CANCELLED")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: the transition each state-changing status asks for
TARGETS = {"RUNNING": N.RUNNING, "SUCCEEDED": N.SUCCEEDED, "FAILED": N.FAILED, "CANCELLED": N.CANCELLED}
#: longest message kept from a status string
MAX_MESSAGE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class PushStatus:
    """A parsed status string."""

    kind: str
    percent: float | None = None
    exit_code: int | None = None
    message: str | None = None


def parse_status(text: str | None) -> PushStatus:
    """Parse a status string (grammar in the module docstring). Raises ConfigError naming what is wrong."""
    words = (text or "").strip().split(None, 1)
    if not words:
        return PushStatus("OUTPUT")
    kind, rest = words[0].upper(), (words[1].strip() if len(words) > 1 else "")
    if kind not in STATUSES:
        raise ConfigError(f"unknown status {words[0]!r}: expected one of {', '.join(STATUSES)}")
    percent = exit_code = None
    if kind == "PROGRESS":
        number, _, rest = rest.partition(" ")
        try:
            percent = float(number)
        except ValueError:
            raise ConfigError(f"PROGRESS needs a percentage from 0 to 100, got {number!r}") from None
        if not (math.isfinite(percent) and 0 <= percent <= 100):
            raise ConfigError(f"PROGRESS needs a percentage from 0 to 100, got {number!r}")
    elif kind in ("SUCCEEDED", "FAILED"):
        first, _, after = rest.partition(" ")
        if re.fullmatch(r"-?\d{1,10}", first):
            exit_code, rest = int(first), after
    message = rest.strip()[:MAX_MESSAGE_CHARS] or None
    return PushStatus(kind, percent, exit_code, message)


def parse_outputs(pairs: list[tuple[str | None, str | None]], max_bytes: int) -> tuple[tuple[str, Any], ...]:
    """Validated (name, JSON value) pairs. Raises ConfigError or LimitExceeded."""
    out = []
    for name, text in pairs:
        if name is None or not NAME_RE.fullmatch(name):
            raise ConfigError(f"invalid output name {name!r}: expected [A-Za-z_][A-Za-z0-9_]{{0,63}}")
        text = text or ""
        if len(text.encode("utf-8", "surrogatepass")) > max_bytes:
            raise LimitExceeded(f"output {name!r} is larger than the {max_bytes} bytes allowed "
                                "([limits] max_output_bytes)")
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError:
            value = text  # not JSON: kept as a string
        out.append((name, value))
    return tuple(out)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Waiter:
    """Receives the writer's follow-up (applied) or reply (rejected); forwards a follow-up if asked."""

    def __init__(self, forward: Any = None):
        self.forward = forward
        self.done = threading.Event()
        self.rejected: str | None = None

    def tell(self, message: Any) -> None:  # the writer delivers the transition's follow-up: committed
        if self.forward is not None and message is not None:
            self.forward.tell(message)
        self.done.set()

    def set(self, message: Any) -> None:  # the writer's reply: only ever a Rejected
        self.rejected = getattr(message, "reason", str(message))
        self.done.set()


def apply_push(api: ApiContext, elf: ElfIdentity, status_text: str | None,
               output: list[tuple[str | None, str | None]]) -> str:
    """Apply one updateNodeStatus call; returns what happened ("applied", "reported", "ignored: ...")."""
    status = parse_status(status_text)
    outputs = parse_outputs(output, api.settings.limits.max_output_bytes)
    with api.sessions() as s:
        node = s.execute(select(Node.id, Node.workflow_id, Node.path, Node.template, Node.state, Node.attempt,
                                Node.parent_id, Node.member_index, Node.bindings)
                         .where(Node.id == elf.node_id)).first()
        if node is None:
            return "ignored: the node no longer exists"
        if node.attempt != elf.attempt:
            return f"ignored: attempt {elf.attempt} is stale (the node is at attempt {node.attempt})"
        if N(node.state) in TERMINAL:
            return f"ignored: the node has already ended ({node.state})"
        target = TARGETS.get(status.kind)
        if target is not None and node.state == target.value:
            target = None  # the same status again: idempotent
        earlier = _earlier_outputs(s, node) if target in TERMINAL else {}
        stage_out = _stage_out(api, s, node) if target is N.SUCCEEDED else None
    writer = api.engine.writer
    if outputs or status.percent is not None:
        progress = (status.percent, status.message) if status.percent is not None else None
        writer.tell(c.Reported(node_id=elf.node_id, attempt=elf.attempt, actor="elf", progress=progress,
                               outputs=outputs))
    if target is None:
        return "reported"
    fields: list[tuple[str, Any]] = []
    if status.exit_code is not None:
        fields.append(("exit_code", status.exit_code))
    if target in TERMINAL and (earlier or outputs):
        fields.append(("outputs", {**earlier, **dict(outputs)}))
    if target is N.FAILED:
        fields.append(("retryable", True))
    to = target
    waiter = _Waiter()
    if stage_out is not None:
        to, waiter = N.STAGING_OUT, _Waiter(forward=api.engine.staging)
    writer.tell(c.Transition(node_id=elf.node_id, to=to, actor="elf", attempt=elf.attempt, fields=tuple(fields),
                             message=status.message, then=(waiter, stage_out), reply_to=waiter))
    if not waiter.done.wait(COMMIT_TIMEOUT):
        raise BrokerError(f"the status of node {elf.node_id} was not committed within {COMMIT_TIMEOUT:g} s")
    if waiter.rejected is not None:
        log.debug("updateNodeStatus of session %s ignored: %s", elf.session_id, waiter.rejected)
        return f"ignored: {waiter.rejected}"
    return "applied"


def _earlier_outputs(s: Any, node: Any) -> dict[str, Any]:
    """Outputs this attempt pushed before (NODE_OUTPUT events): kept on the node with the final status."""
    rows = s.execute(select(Event.properties).where(Event.workflow_id == node.workflow_id,
                                                    Event.node_path == node.path,
                                                    Event.type == EventType.NODE_OUTPUT.value)
                     .order_by(Event.id)).scalars()
    return {p["name"]: p.get("value") for p in rows if p and p.get("attempt") == node.attempt and "name" in p}


def _stage_out(api: ApiContext, s: Any, node: Any) -> Any:
    """The StageOutRequest for the staging controller when the node has stage-out files, else None."""
    from broker.actions import NodeRef
    from broker.controllers.messages import StageOutRequest

    plan = api.engine.ctx.plans.get(node.workflow_id)
    spec = plan.templates.get(node.template)
    if not getattr(spec, "stage_out", ()):
        return None
    chain: list[tuple[tuple[str, str], ...]] = [tuple(tuple(p) for p in node.bindings)] if node.bindings else []
    parent = node.parent_id
    while parent is not None:  # bindings of every enclosing member, outer first
        row = s.execute(select(Node.parent_id, Node.bindings).where(Node.id == parent)).one()
        if row.bindings:
            chain.append(tuple(tuple(p) for p in row.bindings))
        parent = row.parent_id
    bindings = tuple(pair for level in reversed(chain) for pair in level)
    ref = NodeRef(node_id=node.id, workflow_id=node.workflow_id, workflow_global_id=plan.global_id, path=node.path,
                  template=node.template, attempt=node.attempt, bindings=bindings, member_index=node.member_index)
    return StageOutRequest(ref)
