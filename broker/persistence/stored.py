"""Stored workflows: checked descriptions kept under a name, one row per version.

Names form one catalogue shared by every user: anyone may list, show and run a stored workflow (flowserv's
templates, a lab's shared recipes), but a name belongs to the user who added its first version, and only
they or an admin add versions to it or remove it. The description is checked before it gets here (the
caller runs the same checks as ``broker validate``); this module only keeps versions:

* content whose SHA-256 equals the newest version's is not a new version (:func:`add` says so);
* otherwise the new version is the newest plus one (versions are never reused while the name exists);
* removing a name removes every version; the workflows submitted from it keep their own copy of the
  description and their origin (name, version, arguments), so nothing that ran or runs is touched.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker.errors import ConfigError, NotAuthorized, NotFound
from broker.persistence.models import StoredWorkflow, User, Workflow

#: a stored name: path- and option-safe like a node id; never '@' (it separates the version) or '/'
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
_REF_RE = re.compile(r"(?P<name>[^@]+)(?:@(?P<version>[0-9]{1,9}))?")


@dataclass(frozen=True, slots=True)
class Added:
    """What :func:`add` did."""

    name: str
    version: int
    #: False when the content equals the newest version's (nothing was stored)
    created: bool


def check_name(name: str) -> str:
    """``name`` if it is a valid stored name; raises ConfigError saying what a name is."""
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{name[:80]!r} is not a valid stored workflow name: letters, digits, '_', '.', '-', "
                          "1 to 64 characters, not starting with '.' or '-'")
    return name


def parse_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` -> (name, version or None). Raises ConfigError."""
    match = _REF_RE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{text[:80]!r} is not NAME or NAME@VERSION")
    version = match.group("version")
    return check_name(match.group("name")), int(version) if version is not None else None


def _versions(s: Session, name: str) -> list[StoredWorkflow]:
    return list(s.execute(select(StoredWorkflow).where(StoredWorkflow.name == name)
                          .order_by(StoredWorkflow.version)).scalars())


def _may_change(s: Session, rows: list[StoredWorkflow], user: User) -> None:
    owner_id = rows[0].owner_id
    if user.role == "admin" or owner_id == user.id:
        return
    owner = s.get(User, owner_id) if owner_id is not None else None
    who = f"user {owner.name}" if owner is not None else "a removed user (an admin may change it)"
    raise NotAuthorized(f"stored workflow '{rows[0].name}' belongs to {who}")


def add(s: Session, user: User, name: str, descriptor: str, workflow_name: str) -> Added:
    """Store ``descriptor`` under ``name`` as its next version (or nothing when it equals the newest)."""
    check_name(name)
    digest = hashlib.sha256(descriptor.encode("utf-8", "surrogatepass")).hexdigest()
    rows = _versions(s, name)
    if rows:
        _may_change(s, rows, user)
        if rows[-1].descriptor_sha256 == digest:
            return Added(name, rows[-1].version, created=False)
    version = rows[-1].version + 1 if rows else 1
    s.add(StoredWorkflow(name=name, version=version, owner_id=rows[0].owner_id if rows else user.id,
                         descriptor=descriptor, descriptor_sha256=digest, workflow_name=workflow_name))
    s.flush()
    return Added(name, version, created=True)


def get(s: Session, name: str, version: int | None = None) -> StoredWorkflow:
    """One version of a stored workflow (the newest when ``version`` is None). Raises NotFound."""
    query = select(StoredWorkflow).where(StoredWorkflow.name == name)
    if version is None:
        query = query.order_by(StoredWorkflow.version.desc()).limit(1)
    else:
        query = query.where(StoredWorkflow.version == version)
    row = s.execute(query).scalars().first()
    if row is None:
        if version is not None and _versions(s, name):
            raise NotFound(f"stored workflow '{name}' has no version {version}")
        raise NotFound(f"no stored workflow '{name}'")
    return row


def listing(s: Session) -> list[dict[str, Any]]:
    """One entry per name: its newest version, how many versions, owner, workflow name, when added."""
    newest = (select(StoredWorkflow.name, func.max(StoredWorkflow.version).label("version"),
                     func.count().label("versions")).group_by(StoredWorkflow.name).subquery())
    rows = s.execute(
        select(StoredWorkflow, newest.c.versions, User.name.label("owner"))
        .join(newest, (newest.c.name == StoredWorkflow.name) & (newest.c.version == StoredWorkflow.version))
        .outerjoin(User, User.id == StoredWorkflow.owner_id).order_by(StoredWorkflow.name)).all()
    return [{"name": r.StoredWorkflow.name, "version": r.StoredWorkflow.version, "versions": r.versions,
             "owner": r.owner, "workflow": r.StoredWorkflow.workflow_name,
             "sha256": r.StoredWorkflow.descriptor_sha256, "added": r.StoredWorkflow.created_at} for r in rows]


def versions(s: Session, name: str) -> list[StoredWorkflow]:
    """Every version of ``name``, oldest first. Raises NotFound."""
    rows = _versions(s, name)
    if not rows:
        raise NotFound(f"no stored workflow '{name}'")
    return rows


def owner_name(s: Session, row: StoredWorkflow) -> str | None:
    user = s.get(User, row.owner_id) if row.owner_id is not None else None
    return user.name if user is not None else None


def remove(s: Session, user: User, name: str) -> tuple[int, int]:
    """Remove every version of ``name``: (versions removed, workflows submitted from it, which keep their
    description and origin). Raises NotFound, NotAuthorized."""
    rows = versions(s, name)
    _may_change(s, rows, user)
    used = s.execute(select(func.count()).select_from(Workflow).where(Workflow.origin_name == name)).scalar_one()
    for row in rows:
        s.delete(row)
    s.flush()
    return len(rows), used


__all__ = ["Added", "NAME_RE", "add", "check_name", "get", "listing", "owner_name", "parse_ref", "remove",
           "versions"]
