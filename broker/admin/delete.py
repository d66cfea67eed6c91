"""Deleting finished workflows: their rows (nodes, events, outbox...) and their work directories, nothing else.

The one rule set, shared by the CLI (``broker admin delete``, ``broker admin archive``) and the API
(``delete``, ``deleteAll*``, ``archiveWorkflowsTo``); the conditions live in
:func:`broker.persistence.queries._blocker`:

* only finished workflows go (succeeded, failed, cancelled): a running one is never touched, so never
  half-deleted; bulk deletes skip and report it, deleting one by id refuses (StateError);
* when a bus is configured (``[events] url``), a workflow goes only once its outbox has drained, so that
  consumers still receive its final events; otherwise it is skipped and reported like a running one;
* the conditions are checked again inside the DELETE, so a workflow restarted (or given an event) since it
  was selected stays.

Order, for crash safety: the work directories to remove are written to a journal (fsync), the rows are
deleted and the service-level ADMIN_ACTION event recorded in one commit, and only then are the directories
removed. The database's writer makes that commit, as it makes every change: the running broker's (the API,
through its engine), or a store of the command's own while it holds the broker lock
(:class:`broker.admin.audit.OwnWriter`). A
crash after the commit leaves directories that the journal names: the next deletion (:meth:`Deleter.recover`)
removes those whose workflow is gone, and forgets the others (the crash came before the commit).

A workflow's work directories are ``<workdir root>/<global id>`` under the configured root and under every
root its nodes' recorded work directories show (``broker run --workdir`` elsewhere), and ``<work root>/<global
id>`` on each remote host where its nodes ran, as the owner's account there (``remove`` callback, given by the
CLI and the API from the host catalogue). A remote host that cannot be reached keeps its entry in the
journal: the next deletion tries again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from broker.admin.audit import Recorder, Writer
from broker.atomic import atomic_write
from broker.crashpoints import crash_point
from broker.errors import NotFound, ResourceError, StateError
from broker.ids import GLOBAL_ID_RE, split_global_id
from broker.persistence import queries
from broker.persistence.changes import DeleteWorkflows, Planned
from broker.persistence.models import Node, Workflow
from broker.persistence.upkeep import vacuum_deleted

log = logging.getLogger(__name__)

#: one lock per journal file: API threads of one broker may delete at the same time
_JOURNAL_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Selection:
    """Which workflows a delete considers (every field that is set must match)."""

    owner_id: int | None = None
    finished_before: Any = None
    completed_only: bool = False
    workflow_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """What a delete would remove now and what it would leave, with why (rows of deletion_candidates)."""

    deletable: tuple[Any, ...]
    skipped: tuple[Any, ...]


@dataclass
class Journal:
    """Work directories of workflows being deleted: one JSON line per workflow, fsynced before the commit."""

    path: Path
    _lock: threading.Lock = field(init=False)

    def __post_init__(self) -> None:
        with _LOCKS_LOCK:
            self._lock = _JOURNAL_LOCKS.setdefault(str(self.path), threading.Lock())

    def add(self, entries: dict[str, list[Any]]) -> None:
        """Append entries (global id -> local directories, and [host, owner] of remote ones) durably."""
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            for gid, dirs in entries.items():
                fh.write(json.dumps({"gid": gid, "dirs": dirs}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def entries(self) -> dict[str, list[Any]]:
        """Every entry still in the journal (a torn last line, from a crash while appending, is ignored)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        found: dict[str, list[Any]] = {}
        for line in text.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                entry = json.loads(line)
                found.setdefault(entry["gid"], []).extend(entry["dirs"])
        return found

    def drop(self, gids: Iterable[str]) -> None:
        """Forget entries (their directories are gone, or their workflow stays)."""
        gone = set(gids)
        with self._lock:
            left = {gid: dirs for gid, dirs in self.entries().items() if gid not in gone}
            if not left:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return
            with atomic_write(self.path) as fh:
                for gid, dirs in left.items():
                    fh.write((json.dumps({"gid": gid, "dirs": dirs}) + "\n").encode("utf-8"))


def journal_for(workdir_root: Path, database_url: str) -> Journal:
    """The journal of one database's deletions, kept in its work directory root."""
    key = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return Journal(workdir_root / f".deleting-{key}.jsonl")


def broker_deleter(engine: Any, actor: str, database_url: str, *, require_drained: bool,
                   writer: Writer | None = None) -> Deleter:
    """The Deleter of the broker running ``engine`` on this machine (its read sessions, work directory root and
    journal, plan cache and remote hosts), recording through ``writer`` (default: the engine's), with the
    deletions an earlier one left half done finished first."""
    root = engine.workdir
    deleter = Deleter(engine.sessions, writer or engine, actor, workdir_root=root,
                      journal=journal_for(root, database_url), require_drained=require_drained,
                      forget=engine.forget, remove_remote=engine.remove_remote_workdir)
    deleter.recover()
    return deleter


class Deleter:
    """Deletes finished workflows and their work directories, and records what it removed."""

    def __init__(self, sessions: sessionmaker[Session], writer: Writer, actor: str, *, workdir_root: Path,
                 journal: Journal, require_drained: bool, forget: Callable[[int], None] | None = None,
                 remove_remote: RemoveRemote | None = None):
        """``writer``: the database's writer, which deletes the rows and records what was done as ``actor``
        (``admin:<name>`` or ``user:<name>``); ``require_drained``: a bus is configured (``[events] url``);
        ``forget``: drop cached state of a deleted workflow (the running broker's plan cache);
        ``remove_remote(host, owner, global_id)``: remove a workflow's directory on a remote catalogue host
        (without it, remote directories are left)."""
        self.sessions = sessions
        self.writer = writer
        self.recorder = Recorder(writer, actor)
        self.workdir_root = workdir_root
        self.journal = journal
        self.require_drained = require_drained
        self.forget = forget
        self.remove_remote = remove_remote

    # ----------------------------------------------------------------------------------------- selection

    def plan(self, selection: Selection) -> Plan:
        """What a delete of ``selection`` would remove now, and what it would leave (with the reason)."""
        with self.sessions() as s:
            ok, skipped = queries.deletion_candidates(
                s, owner_id=selection.owner_id, finished_before=selection.finished_before,
                completed_only=selection.completed_only, workflow_ids=selection.workflow_ids,
                require_drained=self.require_drained)
        return Plan(tuple(ok), tuple(skipped))

    def plan_one(self, global_id: str, owner_id: int | None = None) -> Plan:
        """The plan of deleting one workflow by global id (or database id). Raises NotFound."""
        with self.sessions() as s:
            workflow_id = resolve_workflow(s, global_id, owner_id)
        return self.plan(Selection(workflow_ids=(workflow_id,)))

    # ------------------------------------------------------------------------------------------ deleting

    def delete(self, rows: Sequence[Any], what: str, *, skipped: Sequence[Any] = (),
               last_event_id: int | None = None, properties: dict[str, Any] | None = None) -> queries.Deletion:
        """Delete the planned ``rows`` (those still deletable now), then their work directories.

        The writer deletes the rows and records, in the same commit, the one service-level ADMIN_ACTION event
        that reports them with the ``skipped`` rows (from the plan); ``what`` names the operation.
        ``last_event_id``: see :func:`queries.delete_finished`.
        """
        rows = list(rows)
        dirs = self._directories(rows)
        self.journal.add(dirs)
        actor = self.recorder.actor
        answer = self.writer.delete_workflows(DeleteWorkflows(
            tuple(Planned(r.id, r.global_id) for r in rows), actor, what,
            skipped=tuple(r.global_id for r in skipped), reasons=tuple(r.reason or "" for r in skipped),
            require_drained=self.require_drained, last_event_id=last_event_id, properties=properties))
        result = answer.deletion
        log.info("%s: deleted %d workflow(s), skipped %d, by %s", what, len(result.deleted), len(result.skipped),
                 actor)
        crash_point("delete-committed")
        gone = [r for r in rows if r.id in answer.workflow_ids]
        kept = self._remove({r.global_id: dirs.get(r.global_id, []) for r in gone})
        self.journal.drop(r.global_id for r in rows)
        self.journal.add(kept)
        if self.forget is not None:
            for r in gone:
                self.forget(r.id)
        if gone:  # after the commit, outside any transaction: PostgreSQL reuses the rows' space only once vacuumed
            vacuum_deleted(self.sessions.kw["bind"])
        return result

    def delete_one(self, global_id: str, what: str, owner_id: int | None = None) -> queries.Deletion:
        """Delete one finished workflow. Raises NotFound, or StateError while it runs or has unpublished events."""
        plan = self.plan_one(global_id, owner_id)
        if plan.skipped:
            raise StateError(f"cannot delete: {plan.skipped[0].reason}"
                             + (" (cancel it first)" if plan.skipped[0].state not in queries.COMPLETED else
                                " (try again once the bus has received them)"))
        result = self.delete(plan.deletable, what)
        if not result.deleted:
            raise StateError(f"cannot delete: {result.reasons[0]}")
        return result

    def recover(self) -> list[str]:
        """Finish earlier deletions (interrupted by a crash, or with a remote host down): remove the journal's
        directories of workflows now gone; returns the global ids whose directories are all gone now."""
        entries = self.journal.entries()
        if not entries:
            return []
        with self.sessions() as s:
            existing = set(s.execute(select(Workflow.global_id).where(Workflow.global_id.in_(list(entries))))
                           .scalars())
        finished = {gid: dirs for gid, dirs in entries.items() if gid not in existing}
        kept = self._remove(finished)
        self.journal.drop(entries)
        self.journal.add(kept)
        done = sorted(set(finished) - set(kept))
        if done:
            log.info("removed the remaining work directories of %d deleted workflow(s)", len(done))
        return done

    # ------------------------------------------------------------------------------------ directories

    def _directories(self, rows: Sequence[Any]) -> dict[str, list[Any]]:
        """Global id -> local directories (paths) and remote places ([host, owner]) to remove."""
        found: dict[str, list[Any]] = dict(work_directories(self.sessions, rows, self.workdir_root))
        for gid, places in remote_places(self.sessions, rows).items():
            found.setdefault(gid, []).extend(places)
        return found

    def _remove(self, dirs: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Remove the directories; returns the remote places that could not be reached (to try again)."""
        kept: dict[str, list[Any]] = {}
        for gid, places in dirs.items():
            if not GLOBAL_ID_RE.fullmatch(gid):
                continue
            for place in places:
                if isinstance(place, list):
                    if not self._remove_remote(gid, place):
                        kept.setdefault(gid, []).append(place)
                    continue
                target = Path(place)
                # only ever a directory named after the workflow: a corrupt journal cannot point elsewhere
                if target.name != gid or not _is_real_dir(target):
                    continue
                shutil.rmtree(target, onerror=_log_rmtree_error)
        return kept

    def _remove_remote(self, gid: str, place: list[Any]) -> bool:
        """Remove ``gid``'s directory on a remote host; False when it should be tried again later."""
        if len(place) != 2 or not all(isinstance(p, str) for p in place):
            return True  # not a place this code wrote: nothing to retry
        host, owner = place
        if self.remove_remote is None:
            log.warning("left the work directory of %s on %s (no host catalogue here)", gid, host)
            return True
        try:
            self.remove_remote(host, owner, gid)
        except ResourceError as exc:
            if not exc.retryable:  # the host or the account is gone from the catalogue: no use retrying
                log.warning("left the work directory of %s on %s: %s", gid, host, exc)
                return True
            log.warning("cannot remove the work directory of %s on %s yet (tried again at the next "
                        "deletion): %s", gid, host, exc)
            return False
        except Exception as exc:  # never fail a deletion whose rows are gone; keep it for the next one
            log.warning("cannot remove the work directory of %s on %s yet (tried again at the next "
                        "deletion): %s", gid, host, exc)
            return False
        return True


#: removes one workflow's work directory on a remote catalogue host: (host name, owner, global id)
RemoveRemote = Callable[[str, str, str], None]


def work_directories(sessions: sessionmaker[Session], rows: Sequence[Any], workdir_root: Path) -> dict[str, list[str]]:
    """Global id -> the existing local work directories of each workflow (rows with id and global_id)."""
    by_id = {r.id: r.global_id for r in rows}
    roots: dict[str, set[str]] = {gid: {str(workdir_root)} for gid in by_id.values()}
    ids = list(by_id)
    with sessions() as s:
        for start in range(0, len(ids), queries.DELETE_CHUNK):
            query = select(Node.workflow_id, Node.workdir).where(
                Node.workflow_id.in_(ids[start:start + queries.DELETE_CHUNK]), Node.workdir.is_not(None),
                # remote attempts (host login@name) record the remote path: not a directory here
                Node.host.is_(None) | Node.host.not_like("%@%")).distinct()
            for workflow_id, workdir in s.execute(query):
                gid = by_id[workflow_id]
                # <root>/<gid>/<node dir>/<attempt>: the part before the global id is a root
                head, sep, _ = workdir.partition(f"/{gid}/")
                if sep:
                    roots[gid].add(head)
    return {gid: [str(Path(root) / gid) for root in sorted(found) if _is_real_dir(Path(root) / gid)]
            for gid, found in roots.items()}


def remote_places(sessions: sessionmaker[Session], rows: Sequence[Any]) -> dict[str, list[list[str]]]:
    """Global id -> [catalogue host, owner] of each remote host the workflow's attempts ran on.

    Rows carry id, global_id and owner (the user name); a remote attempt records its host as login@name.
    """
    by_id = {r.id: r for r in rows}
    ids = list(by_id)
    found: dict[str, list[list[str]]] = {}
    with sessions() as s:
        for start in range(0, len(ids), queries.DELETE_CHUNK):
            query = select(Node.workflow_id, Node.host).where(
                Node.workflow_id.in_(ids[start:start + queries.DELETE_CHUNK]), Node.host.like("%@%")).distinct()
            hosts: dict[int, set[str]] = {}
            for workflow_id, host in s.execute(query):
                hosts.setdefault(workflow_id, set()).add(host.rpartition("@")[2])
            for workflow_id, names in hosts.items():
                row = by_id[workflow_id]
                found[row.global_id] = [[name, row.owner] for name in sorted(names)]
    return found


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _log_rmtree_error(function: Any, path: str, exc_info: Any) -> None:
    log.warning("cannot remove %s: %s", path, exc_info[1])


def resolve_workflow(s: Session, text: str, owner_id: int | None = None) -> int:
    """The database id of a workflow named by its global id or number, if the scope allows. Raises NotFound."""
    text = (text or "").strip()
    if text.isdigit():
        row = s.execute(select(Workflow.id, Workflow.owner_id).where(Workflow.id == int(text))).first()
        name = f"with id {text}"
    else:
        try:
            wf_gid, path = split_global_id(text)
        except ValueError as exc:
            raise NotFound(str(exc)) from None
        if path:
            raise NotFound(f"{text!r} names a node: only whole workflows can be deleted or archived")
        row = s.execute(select(Workflow.id, Workflow.owner_id).where(Workflow.global_id == wf_gid)).first()
        name = wf_gid
    if row is None or (owner_id is not None and row.owner_id != owner_id):
        raise NotFound(f"no workflow {name}")
    return row.id
