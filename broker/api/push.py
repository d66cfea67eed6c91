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
current (stale), and a report on an attempt that has ended are ignored without a fault. The report is the
monitoring controller's to apply, exactly as what it reads from the attempt's status files (one completion
path: an end, with stage-out from the attempt's host; progress and outputs). A call that ends the attempt
returns after the result is committed; a progress or output report is handed over and committed with the
writer's next batch.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from broker.api.context import COMMIT_TIMEOUT, ApiContext
from broker.controllers.messages import Receipt
from broker.errors import BrokerError, ConfigError, LimitExceeded
from broker.launchers.base import CANCELLED, FAILED, SUCCEEDED, AttemptResult
from broker.persistence.elfsessions import ElfIdentity
from broker.persistence.models import Node
from broker.states import NodeState

log = logging.getLogger(__name__)

STATUSES = ("RUNNING", "PROGRESS", "OUTPUT", "SUCCEEDED", "FAILED", "CANCELLED")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: the outcome of the attempt's result each end status reports
OUTCOMES = {"SUCCEEDED": SUCCEEDED, "FAILED": FAILED, "CANCELLED": CANCELLED}
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


def apply_push(api: ApiContext, elf: ElfIdentity, status_text: str | None,
               output: list[tuple[str | None, str | None]]) -> str:
    """Apply one updateNodeStatus call; returns what happened ("applied", "ignored: ...").

    The report goes to the monitoring controller, which takes it as it takes what it reads from the attempt's
    files; the call returns once that is committed (or known to change nothing)."""
    status = parse_status(status_text)
    outputs = parse_outputs(output, api.settings.limits.max_output_bytes)
    with api.sessions() as s:
        node = s.execute(select(Node.state, Node.attempt).where(Node.id == elf.node_id)).first()
    if node is None:
        return "ignored: the node no longer exists"
    if node.attempt != elf.attempt:
        return f"ignored: attempt {elf.attempt} is stale (the node is at attempt {node.attempt})"
    if NodeState(node.state) not in (NodeState.QUEUED, NodeState.RUNNING):
        return f"ignored: the attempt has already ended (the node is {node.state})"
    result = None
    if status.kind in OUTCOMES:
        result = AttemptResult(elf.node_id, elf.attempt, OUTCOMES[status.kind], status.exit_code,
                               message=status.message or "")
    progress = (status.percent, status.message) if status.percent is not None else None
    receipt = Receipt()
    api.engine.pushed(elf.node_id, elf.attempt, progress=progress, outputs=outputs, result=result, receipt=receipt)
    if not receipt.done.wait(COMMIT_TIMEOUT):
        raise BrokerError(f"the status of node {elf.node_id} was not committed within {COMMIT_TIMEOUT:g} s")
    if receipt.rejected is not None:
        log.debug("updateNodeStatus of session %s ignored: %s", elf.session_id, receipt.rejected)
        return f"ignored: {receipt.rejected}"
    return "applied"
