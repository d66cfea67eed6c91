"""Identifiers: how workflows, nodes, work directories and batch jobs are named.

=====================  ========================================  ===========================================
identifier             form                                      example
=====================  ========================================  ===========================================
workflow global id     ``wf-`` + 10 time chars + 8 random chars  ``wf-01jd3k2m9x7q4tz8ha``
                       (Crockford base32, lower case: sorts by
                       submission time, URL- and file-name-safe)
workflow database id   integer primary key                       ``42``
node id (in XML)       ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}``      ``step-1``
                       (path-safe: never ``.``, ``..``, ``-x``)
node path              node ids joined by ``/``; a sweep member  ``sweep[3]/step``
                       is ``<sweep id>[<index>]``, 0-based
node global id         ``<workflow global id>/<node path>``      ``wf-01jd3k2m9x7q4tz8ha/sweep[3]/step``
work directory         ``<workdir root>/<workflow global id>/``  ``.../wf-01jd.../sweep@3/step/1``
                       + path with ``[i]`` written ``@i``, then
                       the attempt number
batch job name         ``wb-<workflow db id>-<node db id>-<att>`` ``wb-42-1234-1``
=====================  ========================================  ===========================================

``@`` never occurs in a node id, so ``sweep@3`` cannot collide with a node named ``sweep.3``; the brackets
are kept out of file names because shells treat them as glob characters. Batch job names use only database
ids because schedulers truncate long names (PBS: 15 characters on older servers); the full global id goes
into the job's comment. A client-chosen ``workflowId`` is a label, unique per user, never a global id.
"""

from __future__ import annotations

import os
import re
import time

#: a node id a description may declare: path-safe, so never "." or "..", nor starting with "." or "-" (ids become
#: directory names and command arguments). Stored workflows may hold ids of the older, wider form
#: [A-Za-z0-9_.-]{1,64}: the node paths of global ids still accept it, so they keep running and resuming.
NODE_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: a user name: never contains a STOMP/JMS destination wildcard or separator
USER_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
GLOBAL_ID_RE = re.compile(r"wf-[0-9a-hjkmnp-tv-z]{18}")
_SEGMENT_RE = re.compile(r"(?P<id>[A-Za-z0-9_.-]{1,64})(?:\[(?P<index>0|[1-9][0-9]{0,8})\])?")

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def _b32(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_workflow_global_id(now_ms: int | None = None) -> str:
    """A fresh workflow global id: time-ordered, 40 random bits, safe in URLs, file names and JMS headers."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return "wf-" + _b32(ms, 10) + _b32(int.from_bytes(os.urandom(5), "big"), 8)


def member_segment(sweep_id: str, index: int) -> str:
    """The path segment of member ``index`` of parameterized node ``sweep_id``: ``sweep[3]``."""
    return f"{sweep_id}[{index}]"


def join_path(prefix: str, segment: str) -> str:
    """Append a segment to a node path (an empty prefix is the workflow's top level)."""
    return f"{prefix}/{segment}" if prefix else segment


def node_global_id(workflow_global_id: str, path: str) -> str:
    return f"{workflow_global_id}/{path}"


def split_global_id(global_id: str) -> tuple[str, str]:
    """Split a global id into (workflow global id, node path); the path is empty for a workflow id.

    Raises ValueError when it is neither.
    """
    wf, _, path = global_id.partition("/")
    if not GLOBAL_ID_RE.fullmatch(wf):
        raise ValueError(f"not a workflow or node global id: {global_id!r}")
    if path and not all(_SEGMENT_RE.fullmatch(seg) for seg in path.split("/")):
        raise ValueError(f"not a node global id: {global_id!r}")
    return wf, path


def path_to_dirname(path: str) -> str:
    """The relative work directory of a node path: ``sweep[3]/step`` -> ``sweep@3/step``."""
    return path.replace("[", "@").replace("]", "")


def job_name(workflow_db_id: int, node_db_id: int, attempt: int) -> str:
    """The deterministic batch job name of one node attempt, also its idempotency token."""
    return f"wb-{workflow_db_id}-{node_db_id}-{attempt}"
