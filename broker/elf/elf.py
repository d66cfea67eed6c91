"""The elf: the compute-side part of the broker that runs one payload attempt and records what happened.

It is one standard-library-only module that works on Python 3.8+. The broker imports it (report parsing,
status files); on a remote host it runs as a script::

    python3 elf.py run --workdir D --payload FILE --type bash [--interpreter X] [--timeout S]
                       --attempt N --session ID [--env-file F] [--cwd DIR] [--max-value-bytes B]
                       [--push FILE]

Report protocol
---------------
A payload reports to the broker by printing lines on its standard output. A report line starts at the very
beginning of a line with ``@broker``, then spaces or tabs, then a kind; any other line is ordinary output::

    @broker progress <percent> ["<message>"]
    @broker output <name>=<value>
    @broker spawn <file>

* ``percent`` is a decimal number from 0 to 100 (``42``, ``42.5``). ``message`` is optional and is a JSON
  string: double quotes and JSON escapes (``\\"``, ``\\\\``, ``\\n``, ``\\u00e9``), so any character can be
  sent; at most 4 KiB of JSON text. The last progress line wins.
* ``name`` matches ``[A-Za-z_][A-Za-z0-9_]{0,63}``; ``value`` is any JSON value (string, number,
  true/false/null, array, object) of at most ``max_value_bytes`` bytes of UTF-8 JSON text (default 1 MiB;
  the broker passes its ``[limits] max_output_bytes``). NaN and Infinity are not JSON and are refused. A
  later output with the same name replaces the earlier one. An attempt keeps at most MAX_OUTPUT_NAMES names
  and MAX_OUTPUTS_BYTES of values together: a report past either is ignored and counted.
* ``file`` names a workflow fragment the payload wrote in its work directory (``WB_WORKDIR``): a relative
  path of at most 1024 bytes (a longer one makes the line malformed), without ``..`` or ``.`` segments,
  reached without following a symlink, naming a regular file of at most :data:`MAX_SPAWN_BYTES`. The last
  spawn line wins. Once the payload has succeeded the elf reads the file into the status file (``spawn``:
  ``file`` and ``text``, or ``error`` saying why it could not, which fails the node), and the broker adds
  its nodes under the node (README "Dynamic spawn").
* Lines end with ``\\n``; a trailing ``\\r`` is ignored. A report line must be valid UTF-8. The last line
  of the output counts even without a final newline once the payload has ended.
* A line over ``max_value_bytes + 1 KiB`` bytes is skipped without being held in memory. A report line that
  is too long, or does not follow the grammar above, is ignored and counted (never an error: the payload's
  own outcome decides the attempt's); the count is recorded with the result.

Examples::

    echo '@broker progress 50 "half way: 5/10 files"'
    echo '@broker output rows=1234'
    printf '@broker output best={"x": 1.5, "label": "caf\\u00e9"}\\n'

Work directory
--------------
Each attempt has its own work directory (mode 0700) holding ``payload`` (the rendered script), ``stdout``,
``stderr``, ``pid`` (the process group id of the payload, one line) and, when run by the elf,
``elf.pid`` and ``status.json``. The status file is replaced atomically (temporary file, fsync, rename);
it names the session (the node's global id) and the attempt, and a reader that expects another session or
attempt ignores it, so a stale or duplicate file can never be taken for the current attempt's result.

Ended by itself, or killed
--------------------------
Whether the payload ended by itself or was killed is decided once, by the first side to create the
attempt's verdict file (``cancel``, :data:`VERDICT_FILE`) exclusively: the elf writes ``exited`` once the
payload has ended by itself, ``timeout`` at the node's timeout and ``terminated`` on a SIGTERM that no
verdict explains (a scheduler's time limit, an administrator); the host agent writes ``cancelled`` before
it signals the elf. A side that finds a verdict there goes by it: a cancel that comes after ``exited``
sends nothing, and the attempt keeps the payload's own result; an elf whose payload ends after a
``cancelled`` records the attempt as cancelled. The status file's outcome always follows the verdict.

Push channel
------------
With ``--push FILE`` (a JSON object ``{"url", "session", "secret"}`` in the work directory, written 0600 by
the launcher and removed by the elf once read) the elf also reports to the broker's SOAP API with
``updateNodeStatus``, authenticated by the attempt's own session id and secret (a WS-Security
UsernameToken): ``RUNNING`` once the payload has started, ``PROGRESS <percent> <message>`` when the payload's
latest progress line changed (looked for every ``interval`` seconds, a key of the push file, default 10),
then, once it has ended, its last progress if that was not pushed yet, and ``SUCCEEDED``/``FAILED <exit code>
<message>`` or ``CANCELLED`` with the output properties. The status
file is written first and stays the primary channel: a push that fails (broker unreachable, fault) is
counted (``push_failures`` in the status file); a failed progress push ends the progress pushes of the
attempt, and the final push is retried once.
"""

# Python 3.8 compatible on purpose: no match statements, no ``X | Y`` types evaluated at run time, no
# str.removeprefix, typing generics from ``typing``.
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

#: outcomes, the same strings as broker.launchers.base (the elf cannot import the broker package)
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"

#: file names inside an attempt's work directory
PAYLOAD_FILE = "payload"
STDOUT_FILE = "stdout"
STDERR_FILE = "stderr"
PID_FILE = "pid"
ELF_PID_FILE = "elf.pid"
STATUS_FILE = "status.json"
#: the attempt's verdict (see "Ended by itself, or killed"); named ``cancel`` because earlier versions wrote
#: only the broker's cancel mark there, which reads as the same verdict
VERDICT_FILE = "cancel"
#: verdicts besides the outcomes TIMEOUT and CANCELLED
EXITED = "exited"
TERMINATED = "terminated"

#: payload type -> interpreter used when the node names none (a command name is looked up in PATH)
DEFAULT_INTERPRETERS = {"sh": "/bin/sh", "bash": "bash", "python": "python3", "csh": "csh"}

#: bytes: default largest JSON text of one output value
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
#: bytes: room on a report line beyond its value (prefix, kind, name)
LINE_OVERHEAD_BYTES = 1024
#: distinct output names one attempt may report: a report of another name is ignored and counted (a flood of
#: names would grow the broker's memory, the node's row and its events without bound)
MAX_OUTPUT_NAMES = 1000
#: bytes: the JSON text of one attempt's output values together, at most (or one value's limit if that is
#: larger, see outputs_limit): a report that would grow the total past it is ignored and counted, as one of a
#: name past MAX_OUTPUT_NAMES is (a thousand values of a mebibyte would make a gigabyte node row, and a probe
#: reply past what the broker reads from a host)
MAX_OUTPUTS_BYTES = 16 * 1024 * 1024
#: bytes: largest JSON text of a progress message
MAX_MESSAGE_BYTES = 4096
#: seconds between SIGTERM and SIGKILL when the payload is killed
KILL_GRACE = 2.0
#: bytes read from the output file at a time
_CHUNK = 64 * 1024
#: version of the status file format (2: ``spawn``)
STATUS_VERSION = 2
#: bytes: largest workflow fragment a payload may spawn
MAX_SPAWN_BYTES = 1024 * 1024
#: bytes: longest spawn file name
MAX_SPAWN_NAME = 1024

_PREFIX = b"@broker"
_LINE_PREFIX = b"\n" + _PREFIX
#: bytes a read of a running payload's output looks at, at most (the next read goes on from there): a payload
#: printing a gigabyte a second costs each read some 30 ms, not seconds
SCAN_BUDGET = 64 * 1024 * 1024
#: report lines parsed by such a read, at most: each costs some microseconds, where skipping a line costs none
SCAN_PARSES = 10000
#: progress lines parsed by any other read (the end's), at most: past a million report lines parsed (about 4 s),
#: a progress line not seen before in the same read is skipped; outputs and spawns are still read
MAX_PARSES = 1000000
#: a progress line skipped past MAX_PARSES: no report, not counted (the end's read needs no progress)
_PAST_PARSES = (None, False)  # type: Tuple[Optional[ElfReport], bool]
#: distinct report lines one scan remembers the parse of
_SEEN_LINES = 256
_PROGRESS_RE = re.compile(r"@broker[ \t]+progress[ \t]+([0-9]{1,3}(?:\.[0-9]+)?)(?:[ \t]+(.*?))?[ \t]*")
_OUTPUT_RE = re.compile(r"@broker[ \t]+output[ \t]+([A-Za-z_][A-Za-z0-9_]{0,63})=(.*)")
_SPAWN_RE = re.compile(r"@broker[ \t]+spawn[ \t]+(\S+)[ \t]*")


class ElfReport(NamedTuple):
    """One ``@broker`` line, field for field like broker.launchers.base.Report."""

    #: "progress", "output" or "spawn"
    kind: str
    percent: Optional[float] = None
    #: progress message, output name, or spawn file
    text: Optional[str] = None
    value: Any = None


class Scan(NamedTuple):
    """What one pass over an output file found."""

    reports: List[ElfReport]
    #: byte offset where the next pass should start (the start of an incomplete last line)
    offset: int
    #: report lines ignored because they were malformed or too long
    ignored: int


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


def _json(text: str) -> Any:
    """Strict JSON: refuses NaN/Infinity, deep nesting, and lone surrogates (which no database can store)."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
        if "\\u" in text:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError):
        raise ValueError("not valid JSON") from None
    return value


def _parse(line: str, max_value_bytes: int) -> Tuple[Optional[ElfReport], bool]:
    """(report, malformed) for one line without its line end."""
    if not line.startswith("@broker") or (len(line) > 7 and line[7] not in " \t"):
        return None, False
    match = _OUTPUT_RE.fullmatch(line)
    if match is not None:
        name, text = match.groups()
        if len(text.encode("utf-8", "surrogatepass")) > max_value_bytes:
            return None, True
        try:
            return ElfReport("output", None, name, _json(text)), False
        except ValueError:
            return None, True
    match = _SPAWN_RE.fullmatch(line)
    if match is not None:
        if len(match.group(1).encode("utf-8", "surrogatepass")) > MAX_SPAWN_NAME:
            return None, True
        # a name that may not be read ("..", absolute) is still a spawn: reading it fails the node, saying why
        return ElfReport("spawn", None, match.group(1)), False
    match = _PROGRESS_RE.fullmatch(line)
    if match is None or not 0.0 <= float(match.group(1)) <= 100.0:
        return None, True
    message = match.group(2)
    if message:
        try:
            if len(message.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
                raise ValueError("message too long")
            message = _json(message)
        except ValueError:
            return None, True
        if not isinstance(message, str):
            return None, True
    return ElfReport("progress", float(match.group(1)), message if match.group(2) else None), False


def parse_report_line(line: str, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> Optional[ElfReport]:
    """The report on one output line, or None for ordinary output and for malformed report lines."""
    return _parse(line.rstrip("\r\n"), max_value_bytes)[0]


def _is_report_start(data: bytes) -> bool:
    return data.startswith(_PREFIX) and (len(data) == 7 or data[7:8] in (b" ", b"\t"))


def _line_report(raw: bytes, max_value_bytes: int) -> Tuple[Optional[ElfReport], bool]:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if not _is_report_start(raw):
        return None, False
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, True
    return _parse(line, max_value_bytes)


def scan(path: str, offset: int = 0, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
         final: bool = False, budget: Optional[int] = None) -> Scan:
    """Reports in the complete lines of ``path`` from byte ``offset`` on.

    An incomplete last line is left for the next pass, unless ``final`` (the payload has ended). A missing
    file has no reports. Memory stays bounded by the line limit whatever the payload prints. ``budget``: read
    about that many bytes at most, and parse SCAN_PARSES report lines at most (a read while the payload runs;
    the next pass goes on from the offset). Without one, past MAX_PARSES report lines parsed, progress lines
    not seen before are skipped (outputs and spawns are still read).

    Only lines that start with ``@broker`` are looked at, found with ``bytes.find``: ordinary output is
    skipped at the speed of reading it, however short its lines. (Going from line to line in Python took 17 s
    for 50 MB of ``yes``, in the broker for a local attempt and in the resident agent at each end.) The offset
    returned may fall inside an ordinary line still being written; the next pass skips the rest of that line.
    """
    latest = _Latest(outputs_limit(max_value_bytes))  # memory bounded however many lines report
    # report lines parsed so far: a payload printing the same few lines over and over (a progress in a loop)
    # costs a look-up each, not a parse
    seen = {}  # type: Dict[bytes, Tuple[Optional[ElfReport], bool]]
    ignored = 0
    limit = max_value_bytes + LINE_OVERHEAD_BYTES
    handle = open_regular(path)
    if handle is None:
        return Scan([], offset, 0)
    with handle:
        # An offset inside a line means an earlier pass skipped that line's head: skip its tail.
        skipping = False
        if offset > 0:
            handle.seek(offset - 1)
            skipping = handle.read(1) != b"\n"
        handle.seek(offset)
        data = bytearray()  # data[0] starts a line, unless skipping
        base = offset       # file offset of data[0]
        resumable = budget is not None and not final
        parses = SCAN_PARSES if resumable else MAX_PARSES
        while budget is None or final or base + len(data) - offset < budget:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            data += chunk
            start = 0
            if skipping:
                newline = data.find(b"\n")
                if newline < 0:
                    base += len(data)
                    del data[:]
                    continue
                skipping = False
                start = newline + 1
            while True:  # each report line in data, from the line start ``start`` on
                if not data.startswith(_PREFIX, start):
                    found = data.find(_LINE_PREFIX, start)
                    if found < 0:
                        break
                    start = found + 1
                newline = data.find(b"\n", start)
                if newline < 0:
                    break  # data[start:] begins a report line not ended yet
                if newline - start > limit:
                    ignored += _is_report_start(bytes(data[start:start + 8]))
                else:
                    raw = bytes(data[start:newline])
                    parsed = seen.get(raw)
                    if parsed is None and parses == 0:
                        if resumable:  # the budget's parses done: the next read goes on from this line
                            return Scan(latest.reports(), base + start, ignored)
                        if raw[8:16] == b"progress":  # (an output or a spawn is still read: results)
                            parsed = _PAST_PARSES
                    if parsed is None:
                        parses = max(parses - 1, 0)
                        parsed = _line_report(raw, max_value_bytes)
                        if len(seen) < _SEEN_LINES:
                            seen[raw] = parsed
                    report, bad = parsed
                    ignored += bad or (report is not None and not latest.keep(report))
                start = newline + 1
            if not data.startswith(_PREFIX, start):
                # no report line begins at start: keep only the last line's head, while it may still be one
                start = data.rfind(b"\n", start) + 1 or start
                head = bytes(data[start:start + 8])
                if len(head) == 8 or not _PREFIX.startswith(head[:7]):
                    if not _is_report_start(head) and start < len(data):
                        skipping = True  # an ordinary line being written: the rest of it is skipped
                        start = len(data)
            del data[:start]
            base += start
            if len(data) > limit:
                # Too long already: count it once, drop what is held, skip the rest of it.
                if not skipping:
                    ignored += _is_report_start(bytes(data[:8]))
                    skipping = True
                base += len(data)
                del data[:]
        if final and data and not skipping:
            report, bad = _line_report(bytes(data), max_value_bytes)
            ignored += bad or (report is not None and not latest.keep(report))
            base += len(data)
        elif final:
            base += len(data)
    return Scan(latest.reports(), base, ignored)


def outputs_limit(max_value_bytes: int) -> int:
    """Bytes of JSON text one attempt's output values may hold together, when one may hold ``max_value_bytes``."""
    return max(MAX_OUTPUTS_BYTES, max_value_bytes)


def value_size(value: Any) -> int:
    """Bytes of ``value`` as JSON text, as it is stored (compact, UTF-8)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def same_value(a: Any, b: Any) -> bool:
    """Whether two JSON values are the same value (``1``, ``1.0`` and ``true`` are three to JSON, one to ==)."""
    return a == b and json.dumps(a) == json.dumps(b)


class OutputBudget(object):
    """The output values one attempt keeps: at most MAX_OUTPUT_NAMES names and ``limit`` bytes of JSON text
    together. A report of a new name past either bound, or whose value would grow the total past ``limit``, is
    refused (its reader ignores and counts it); the values kept so far stay."""

    __slots__ = ("sizes", "total", "limit")

    def __init__(self, limit: int, outputs: Optional[Dict[str, Any]] = None) -> None:
        self.limit = limit
        #: name -> bytes of the value kept
        self.sizes = {}  # type: Dict[str, int]
        self.total = 0
        for name, value in (outputs or {}).items():
            self.sizes[name] = value_size(value)
            self.total += self.sizes[name]

    def admit(self, name: str, value: Any) -> bool:
        """Whether ``name`` may now hold ``value`` (if so, counted as holding it)."""
        held = self.sizes.get(name)
        if held is None and len(self.sizes) >= MAX_OUTPUT_NAMES:
            return False
        size = value_size(value)
        total = self.total - (held or 0) + size
        if total > self.limit:
            return False
        self.sizes[name] = size
        self.total = total
        return True


class _Latest(object):
    """The last report of each kind, and of each name for outputs (all that fold() and last_spawn() keep), in
    the order of their last lines; outputs within an OutputBudget."""

    def __init__(self, limit):
        # type: (int) -> None
        self.latest = {}  # type: Dict[Tuple[str, Optional[str]], ElfReport]
        self.budget = OutputBudget(limit)

    def keep(self, report: ElfReport) -> bool:
        """Make ``report`` the latest of its kind (and name); False for an output past the budget."""
        output = report.kind == "output"
        key = (report.kind, report.text if output else None)
        held = self.latest.get(key)
        # the same line again (one parse, see scan's ``seen``) holds the same value: nothing to measure
        if output and held is not report and not self.budget.admit(report.text or "", report.value):
            return False
        if held is not None:
            del self.latest[key]  # to the end: the order of the last lines
        self.latest[key] = report
        return True

    def reports(self):
        # type: () -> List[ElfReport]
        return list(self.latest.values())


def scan_reports(path: str, offset: int = 0, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
                 ) -> Tuple[List[ElfReport], int]:
    """(reports, new offset) for the complete lines of ``path`` after ``offset``; see :func:`scan`."""
    found = scan(path, offset, max_value_bytes)
    return found.reports, found.offset


def fold(reports: Sequence[ElfReport], outputs: Dict[str, Any],
         progress: Optional[Tuple[float, Optional[str]]], budget: Optional[OutputBudget] = None
         ) -> Optional[Tuple[float, Optional[str]]]:
    """Apply reports in order: outputs updated in place (later wins) within ``budget`` (the one that has
    measured ``outputs`` so far; None: a new one with the default limit); returns the last progress."""
    if budget is None:
        budget = OutputBudget(outputs_limit(DEFAULT_MAX_VALUE_BYTES), outputs)
    for report in reports:
        if report.kind == "output":
            if budget.admit(report.text or "", report.value):  # (scan() counted the others)
                outputs[report.text] = report.value
        elif report.kind == "progress":
            progress = (report.percent, report.text)
    return progress


def last_progress(reports: Sequence[ElfReport], current: Optional[Tuple[float, Optional[str]]] = None
                  ) -> Optional[Tuple[float, Optional[str]]]:
    """The last progress in ``reports`` (``current`` when there is none)."""
    for report in reports:
        if report.kind == "progress":
            current = (report.percent, report.text)
    return current


def last_spawn(reports: Sequence[ElfReport], current: Optional[str] = None) -> Optional[str]:
    """The file of the last spawn report in ``reports`` (``current`` when there is none)."""
    for report in reports:
        if report.kind == "spawn":
            current = report.text
    return current


def spawn_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot name a spawn fragment (None: it can): relative, no ``..``, bounded."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_SPAWN_NAME:
        return "the file name is longer than %d bytes" % MAX_SPAWN_NAME
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "the file name has control characters"
    if name.startswith("/"):
        return "the file name must be relative to the work directory"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "the file name must not have empty, '.' or '..' segments"
    return None


def read_spawn(workdir: str, name: str, max_bytes: int = MAX_SPAWN_BYTES) -> Tuple[Optional[str], Optional[str]]:
    """(text, None) of the fragment ``name`` in ``workdir``, or (None, why not).

    Each directory on the way is opened without following a symlink, relative to the one before, so the
    payload (whose account owns the directory) cannot point the reader anywhere outside it, even by
    swapping a directory for a link while it reads.
    """
    problem = spawn_name_problem(name)
    if problem is not None:
        return None, problem
    parts = name.split("/")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(workdir, flags | os.O_DIRECTORY)
    except OSError as exc:
        return None, "cannot open the work directory: %s" % (exc.strerror or exc)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            except OSError:
                return None, "%s: not a directory inside the work directory (a symlink is not followed)" % part
            os.close(fd)
            fd = inner
        try:
            file_fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            if os.path.islink(os.path.join(workdir, name)):
                return None, "it is a symlink (not followed)"
            return None, "cannot open it: %s" % (exc.strerror or exc)
    finally:
        os.close(fd)
    try:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):  # a directory, a FIFO (opened without blocking)...
            return None, "it is not a regular file"
        data = b""
        while len(data) <= max_bytes:
            chunk = os.read(file_fd, max_bytes + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(file_fd)
    if len(data) > max_bytes:
        return None, "it is larger than %d bytes" % max_bytes
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"


def spawn_status(workdir: str, name: Optional[str]) -> Optional[Dict[str, Any]]:
    """The status file's ``spawn`` entry for a succeeded payload that reported spawn file ``name``."""
    if name is None:
        return None
    text, problem = read_spawn(workdir, name)
    return {"file": name, "text": text} if problem is None else {"file": name, "error": problem}


# --------------------------------------------------------------------------------------- status file

def write_small_file(path: str, text: str, durable: bool = False) -> None:
    """Replace ``path`` atomically: write a temporary file beside it, optionally fsync, rename."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        # The rename itself must survive a crash too.
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_status(workdir: str, status: Dict[str, Any]) -> None:
    """Write an attempt's status file atomically and durably (temp file, fsync, rename)."""
    text = json.dumps(dict(status, version=STATUS_VERSION), ensure_ascii=False, separators=(",", ":"))
    write_small_file(os.path.join(workdir, STATUS_FILE), text, durable=True)


def read_status(workdir: str, attempt: Optional[int] = None,
                session: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The status of the attempt in ``workdir``; None if absent, unreadable, or for another attempt/session."""
    try:
        with open(os.path.join(workdir, STATUS_FILE), encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    if attempt is not None and status.get("attempt") != attempt:
        return None
    if session is not None and status.get("session") != session:
        return None
    return status


def open_regular(path: str) -> Optional[Any]:
    """``path`` opened for reading if it is a regular file, else None (missing, a link, a FIFO...).

    The directory may belong to the payload's account while the reader is root (a local attempt started as
    its owner): a link planted there must not be followed, nor a FIFO block the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def claim_file(path: str, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; True if this call created it (False: it existed).

    The text is written to a name of its own first and hard-linked into place, so the file appears whole
    or not at all; never through a symlink. Raises OSError when it cannot be written.
    """
    tmp = "%s.%d.%s" % (path, os.getpid(), os.urandom(6).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def claim_verdict(workdir: str, verdict: str) -> bool:
    """Claim the attempt's verdict (see "Ended by itself, or killed"); True if this call decided it."""
    return claim_file(os.path.join(workdir, VERDICT_FILE), verdict + "\n")


def read_verdict(workdir: str) -> Optional[str]:
    """The attempt's verdict (``exited``, ``cancelled``, ``timeout``, ``terminated``), None if there is none."""
    handle = open_regular(os.path.join(workdir, VERDICT_FILE))
    if handle is None:
        return None
    try:
        with handle:
            text = handle.read(64).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text or None


def read_int_file(path: str) -> Optional[int]:
    """The integer on the one complete line of ``path`` (ending with a newline), else None."""
    handle = open_regular(path)
    if handle is None:
        return None
    try:
        with handle:
            data = handle.read(64)
    except OSError:
        return None
    if not data.endswith(b"\n"):
        return None  # absent, or caught half written
    try:
        return int(data.strip())
    except ValueError:
        return None


def exit_message(exit_code: Optional[int]) -> str:
    """One line for an exit code, naming the signal for codes above 128 (shell convention)."""
    if exit_code is None:
        return "no exit code"
    if 128 < exit_code < 128 + 65:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = "signal %d" % (exit_code - 128)
        return "exit code %d (%s)" % (exit_code, name)
    return "exit code %d" % exit_code


def format_seconds(seconds: float) -> str:
    """``5`` for 5.0, ``2.5`` for 2.5: how timeouts appear in messages."""
    return ("%d" % seconds) if float(seconds).is_integer() else ("%g" % seconds)


def ignored_note(ignored: int) -> str:
    """The suffix a result message carries when report lines were ignored."""
    if not ignored:
        return ""
    return "; %d @broker line%s ignored (malformed, too long, or past the bounds on outputs)" % (
        ignored, "" if ignored == 1 else "s")


# ------------------------------------------------------------------------------------------- run mode

def payload_environment(base: Dict[str, str], pairs: Sequence[Tuple[str, str]],
                        workdir: str) -> Dict[str, str]:
    """The payload's environment: ``base`` minus BROKER_* and stale WB_* names, then ``pairs``, WB_WORKDIR."""
    env = {k: v for k, v in base.items() if not (k.startswith("BROKER_") or k.startswith("WB_"))}
    env.update(pairs)
    env["WB_WORKDIR"] = workdir
    return env


def _read_env_file(path: str) -> List[Tuple[str, str]]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    items = data.items() if isinstance(data, dict) else data
    return [(str(name), str(value)) for name, value in items]


#: the verdicts that kill a payload (EXITED is the payload's own end)
KILL_VERDICTS = (TIMEOUT, CANCELLED, TERMINATED)


def decide(workdir: str, verdict: str) -> Optional[str]:
    """Claim ``verdict`` unless there is one already; the verdict that stands (None: unreadable)."""
    try:
        if claim_verdict(workdir, verdict):
            return verdict
    except OSError:
        return verdict  # cannot be recorded: the side that asked still goes by it
    return read_verdict(workdir)


class _Run:
    """The state of one ``run``: the child, why it was killed, and the signal handlers that kill it."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.proc = None  # type: Optional[subprocess.Popen]
        #: the verdict that kills it (TIMEOUT, CANCELLED, TERMINATED), None while there is none
        self.reason = None  # type: Optional[str]

    def decide(self, verdict: str) -> Optional[str]:
        return decide(self.workdir, verdict)

    def kill(self, reason: str) -> None:
        """Kill for ``reason`` (TIMEOUT or TERMINATED), or for the verdict already there; never after EXITED."""
        if self.reason is None:
            verdict = self.decide(reason)
            if verdict in KILL_VERDICTS:
                self.reason = verdict
                self.signal_group()

    def signal_group(self) -> None:
        """SIGTERM the payload's group now, SIGKILL after the grace (the alarm handler sends it)."""
        if self.proc is not None:
            _killpg(self.proc.pid, signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, KILL_GRACE)

    def on_alarm(self, signum: int, frame: Any) -> None:
        if self.reason is None:
            self.kill(TIMEOUT)
        elif self.proc is not None:
            _killpg(self.proc.pid, signal.SIGKILL)

    def on_term(self, signum: int, frame: Any) -> None:
        # the host agent claims "cancelled" before it signals: a SIGTERM without a verdict came from elsewhere
        self.kill(TERMINATED)


# ------------------------------------------------------------------------------------------- push channel

_SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
_WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_PASSWORD_TEXT = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
                  "#PasswordText")
#: namespaces of the core service and of its types (the checked-in wsdl/broker-core.wsdl)
CORE_NS = "urn:workflow-broker:core:v1"
TYPES_NS = "urn:workflow-broker:types:v1"
#: seconds one push may take
PUSH_TIMEOUT = 15.0
#: seconds between looks for a new progress line to push (the push file's "interval" overrides it)
PUSH_PROGRESS_INTERVAL = 10.0


def _xml_text(value: Any) -> str:
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # characters XML 1.0 cannot carry at all are dropped (a message is informative, not data)
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


def push_envelope(session: int, secret: str, status: str, outputs: Dict[str, Any]) -> bytes:
    """The SOAP 1.1 request of ``updateNodeStatus(session, status, outputs)``; values are sent as JSON text."""
    props = "".join('<c:output><t:name>%s</t:name><t:value>%s</t:value></c:output>'
                    % (_xml_text(name), _xml_text(json.dumps(value, ensure_ascii=False)))
                    for name, value in outputs.items())
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<s:Envelope xmlns:s="%s" xmlns:c="%s" xmlns:t="%s"><s:Header>'
            '<w:Security xmlns:w="%s"><w:UsernameToken><w:Username>%d</w:Username>'
            '<w:Password Type="%s">%s</w:Password></w:UsernameToken></w:Security></s:Header>'
            '<s:Body><c:updateNodeStatus><c:sessionId>%d</c:sessionId><c:status>%s</c:status>%s'
            '</c:updateNodeStatus></s:Body></s:Envelope>'
            % (_SOAP_NS, CORE_NS, TYPES_NS, _WSSE_NS, session, _PASSWORD_TEXT, _xml_text(secret), session,
               _xml_text(status), props)).encode("utf-8")


def push(target: Dict[str, Any], status: str, outputs: Optional[Dict[str, Any]] = None,
         attempts: int = 2) -> Optional[str]:
    """Send one status to the broker; None when it was accepted, else why not (after ``attempts`` tries)."""
    import urllib.request  # the HTTP client and email's parser: only for an attempt that pushes

    body = push_envelope(int(target["session"]), str(target["secret"]), status, outputs or {})
    request = urllib.request.Request(str(target["url"]), data=body, method="POST",
                                     headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'})
    problem = None  # type: Optional[str]
    for attempt in range(attempts):
        if attempt:
            time.sleep(1.0)
        try:
            with urllib.request.urlopen(request, timeout=PUSH_TIMEOUT) as response:
                response.read()
            return None
        except Exception as exc:  # HTTPError (a fault), URLError, timeouts: the status file still holds it all
            problem = "%s: %s" % (type(exc).__name__, exc)
    return problem


def read_push_file(path: str) -> Dict[str, Any]:
    """The push target of ``--push``; the file (it holds a secret) is removed once read."""
    with open(path, encoding="utf-8") as handle:
        target = json.load(handle)
    os.remove(path)
    if not isinstance(target, dict) or not {"url", "session", "secret"} <= set(target):
        raise ValueError("%s: expected a JSON object with url, session and secret" % path)
    return target


def _wait_pushing_progress(proc: Any, target: Dict[str, Any], stdout_path: str, max_value_bytes: int,
                           status: Dict[str, Any]) -> Tuple[int, Any]:
    """Wait for the payload; meanwhile push its latest progress whenever it changed (best effort).
    Returns the payload's return code and the last progress pushed."""
    try:
        interval = max(0.05, float(target.get("interval", PUSH_PROGRESS_INTERVAL)))
    except (TypeError, ValueError):
        interval = PUSH_PROGRESS_INTERVAL
    offset, progress, sent = 0, None, None  # type: int, Optional[Tuple[float, Optional[str]]], Any
    while True:
        try:
            return proc.wait(timeout=interval), sent
        except subprocess.TimeoutExpired:
            pass
        found = scan(stdout_path, offset, max_value_bytes, budget=SCAN_BUDGET)
        offset = found.offset
        progress = last_progress(found.reports, progress)
        if progress is None or progress == sent:
            continue
        sent = progress
        if push(target, progress_status(progress), attempts=1) is not None:
            status["push_failures"] = status.get("push_failures", 0) + 1
            return proc.wait(), sent  # the broker is not answering: the status file carries the rest


def progress_status(progress: Tuple[float, Optional[str]]) -> str:
    """The updateNodeStatus string of a progress report."""
    return "PROGRESS %r%s" % (progress[0], " " + progress[1] if progress[1] else "")


def final_push_status(outcome: str, exit_code: Optional[int], message: str) -> str:
    """The updateNodeStatus string of an ended attempt (a timeout is a failure with its message)."""
    if outcome == SUCCEEDED:
        return "SUCCEEDED %d %s" % (exit_code or 0, message)
    if outcome == CANCELLED:
        return "CANCELLED %s" % message
    return "FAILED %d %s" % (exit_code if exit_code is not None else 1, message)


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def final_status(workdir: str, status: Dict[str, Any], reason: Optional[str], returncode: int, timeout: float,
                 max_value_bytes: int) -> Dict[str, Any]:
    """Complete ``status`` for an ended payload: outcome, exit code, reports of its output, spawn file.

    ``reason``: the kill verdict that stands (None: it ended by itself); ``returncode`` as Popen's (-N: killed
    by signal N). The elf's and the resident agent's (which runs payloads without an elf) end of an attempt.
    """
    exit_code = returncode if returncode >= 0 else 128 - returncode
    found = scan(os.path.join(workdir, STDOUT_FILE), 0, max_value_bytes, final=True)
    outputs = {}  # type: Dict[str, Any]
    progress = fold(found.reports, outputs, None, OutputBudget(outputs_limit(max_value_bytes)))
    if reason == TIMEOUT:
        outcome, message = TIMEOUT, "killed after the timeout of %s s" % format_seconds(timeout)
    elif reason == CANCELLED:
        outcome, message = CANCELLED, "cancelled"
    elif reason == TERMINATED:
        outcome, message = CANCELLED, "terminated by a signal the broker did not send"
    else:
        outcome = SUCCEEDED if exit_code == 0 else FAILED
        message = exit_message(exit_code)
    status.update(outcome=outcome, exit_code=exit_code, signal=-returncode if returncode < 0 else None,
                  ended_at=time.time(), progress=list(progress) if progress else None, outputs=outputs,
                  ignored_lines=found.ignored, message=message + ignored_note(found.ignored))
    spawned = spawn_status(workdir, last_spawn(found.reports)) if outcome == SUCCEEDED else None
    if spawned is not None:
        status["spawn"] = spawned
    return status


def agent_end(workdir: str, options: Dict[str, Any], pid: int, started_at: float, returncode: int,
              reason: Optional[str]) -> None:
    """The end of an attempt the resident agent ran without an elf (``broker.elf.agent``, SSH hosts): the same
    verdict and status file as the elf's. Called before the payload is reaped, so ``pid`` is still its group.

    ``options``: the agent's start request's ``elf`` (session, attempt, timeout, max_value_bytes); ``reason``:
    the kill verdict the agent acted on, None when it did not kill the payload.
    """
    if reason is None:
        verdict = decide(workdir, EXITED)
        reason = verdict if verdict in KILL_VERDICTS else None
    if reason is not None:
        _killpg(pid, signal.SIGKILL)  # whatever of the group outlived the payload
    status = {"session": options["session"], "attempt": options["attempt"], "started_at": started_at, "pid": pid,
              "outputs": {}, "ignored_lines": 0}  # type: Dict[str, Any]
    final_status(workdir, status, reason, returncode, float(options.get("timeout") or 0),
                 int(options["max_value_bytes"]))
    write_status(workdir, status)


def run(args: argparse.Namespace) -> int:
    """Run one payload attempt to its end; returns the payload's exit code (128+N when killed by signal N)."""
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    os.chmod(workdir, 0o700)  # also when the launcher created it to upload the payload
    write_small_file(os.path.join(workdir, ELF_PID_FILE), "%d\n" % os.getpid())
    pairs = _read_env_file(args.env_file) if args.env_file else []
    target = read_push_file(os.path.join(workdir, args.push)) if args.push else None
    env = payload_environment(dict(os.environ), pairs, workdir)
    interpreter = args.interpreter or DEFAULT_INTERPRETERS[args.type]
    payload = os.path.join(workdir, args.payload)
    cwd = os.path.join(workdir, args.cwd or "")
    status = {"session": args.session, "attempt": args.attempt, "outcome": None, "exit_code": None,
              "signal": None, "started_at": time.time(), "ended_at": None, "pid": None, "progress": None,
              "outputs": {}, "ignored_lines": 0, "message": "running"}  # type: Dict[str, Any]
    state = _Run(workdir)
    signal.signal(signal.SIGALRM, state.on_alarm)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, state.on_term)
    if read_verdict(workdir) == CANCELLED:
        # cancelled before it could start: the payload does not run at all
        status.update(outcome=CANCELLED, ended_at=time.time(), message="cancelled before it started")
        write_status(workdir, status)
        return 0
    try:
        if not (args.cwd and os.path.isabs(args.cwd)):
            os.makedirs(cwd, mode=0o700, exist_ok=True)
        with open(os.path.join(workdir, STDOUT_FILE), "wb") as out, \
                open(os.path.join(workdir, STDERR_FILE), "wb") as err:
            state.proc = subprocess.Popen([interpreter, payload], stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, cwd=cwd, env=env, start_new_session=True,
                                          close_fds=True)
    except OSError as exc:
        status.update(outcome=FAILED, exit_code=127, ended_at=time.time(),
                      message="cannot start %s: %s" % (interpreter, exc.strerror or exc))
        write_status(workdir, status)
        return 127
    status["pid"] = state.proc.pid
    write_small_file(os.path.join(workdir, PID_FILE), "%d\n" % state.proc.pid)
    write_status(workdir, status)
    if target is not None and push(target, "RUNNING") is not None:
        status["push_failures"] = 1
    if state.reason is not None:
        state.signal_group()  # cancelled while the payload was starting
    elif args.timeout > 0:
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
    pushed_progress = None  # type: Any
    if target is None:
        returncode = state.proc.wait()
    else:
        returncode, pushed_progress = _wait_pushing_progress(state.proc, target, os.path.join(workdir, STDOUT_FILE),
                                                             args.max_value_bytes, status)
    signal.setitimer(signal.ITIMER_REAL, 0)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # it has ended: a late cancel must not relabel the outcome
    if state.reason is None:
        # ended by itself, unless a kill verdict came first (a cancel just before the end): the verdict decides
        verdict = state.decide(EXITED)
        if verdict in KILL_VERDICTS:
            state.reason = verdict
    if state.reason is not None:
        _killpg(state.proc.pid, signal.SIGKILL)  # whatever of the group outlived the payload
    final_status(workdir, status, state.reason, returncode, args.timeout, args.max_value_bytes)
    exit_code, outcome, outputs = status["exit_code"], status["outcome"], status["outputs"]
    progress = tuple(status["progress"]) if status["progress"] else None
    if "spawn" in status:
        # updateNodeStatus has no room for a fragment: the broker takes this result from the status file
        target = None
    write_status(workdir, status)
    # the end's status string has no room for progress: the last one printed since the last look goes first
    if target is not None and progress is not None and progress != pushed_progress:
        if push(target, progress_status(progress), attempts=1) is not None:
            status["push_failures"] = status.get("push_failures", 0) + 1
    if target is not None and push(target, final_push_status(outcome, exit_code, status["message"]),
                                   outputs) is not None:
        status["push_failures"] = status.get("push_failures", 0) + 1
        write_status(workdir, status)
    return exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elf.py", description="Run one workflow broker payload attempt.")
    sub = parser.add_subparsers(dest="command")
    sub.required = True
    cmd = sub.add_parser("run", help="run a payload and record its status in the work directory")
    cmd.add_argument("--workdir", required=True, help="the attempt's work directory (created 0700)")
    cmd.add_argument("--payload", required=True, help="payload file, relative to the work directory or absolute")
    cmd.add_argument("--type", required=True, choices=sorted(DEFAULT_INTERPRETERS))
    cmd.add_argument("--interpreter", help="interpreter command or path (default by type)")
    cmd.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = none")
    cmd.add_argument("--attempt", type=int, required=True)
    cmd.add_argument("--session", required=True, help="the node's global id, recorded in the status file")
    cmd.add_argument("--env-file", help="JSON object or list of [name, value] pairs added to the environment")
    cmd.add_argument("--cwd", help="payload working directory, relative to the work directory or absolute")
    cmd.add_argument("--max-value-bytes", type=int, default=DEFAULT_MAX_VALUE_BYTES)
    cmd.add_argument("--push", help="push target file (JSON url, session, secret), relative to the work directory")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    args = _parser().parse_args(argv)
    if not math.isfinite(args.timeout) or args.timeout < 0:
        _parser().error("--timeout must be a finite number of seconds >= 0")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
