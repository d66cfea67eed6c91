"""submit: the description (inline or fetched from an allowed location), overrides, durable acceptance.

No spyne here: the core service turns the wire type into :class:`SubmissionFields` and the answer into a
handle.
"""

from __future__ import annotations

import hashlib
import logging
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from broker.api.context import ApiContext
from broker.api.identity import named_user
from broker.api.passwords import Verified
from broker.description.arguments import bind, parse_assignments
from broker.description.load import load_description
from broker.errors import ConfigError, LimitExceeded, NotFound, StateError
from broker.events.routing import metadata_destination_problem
from broker.events.types import EventLevel
from broker.persistence import queries, stored
from broker.persistence.models import Workflow

log = logging.getLogger(__name__)

#: seconds to wait for a workflowUrl to answer
FETCH_TIMEOUT = 30.0
#: column lengths checked before the writer sees the submission (its refusal would lose the error's kind)
LENGTHS = {"workflowId": 200, "id": 200, "experimentId": 200, "publishMetadataTo": 256}
#: a submission's priority, as the description's (schemas/workflow.xsd Priority)
PRIORITY_RANGE = (-1_000_000, 1_000_000)


@dataclass(frozen=True, slots=True)
class SubmissionFields:
    """The fields of a BrokerSubmission, None when not given."""

    event_level: str | None = None
    experiment_id: str | None = None
    request_id: str | None = None
    priority: int | None = None
    publish_metadata_to: str | None = None
    user: str | None = None
    content: str | None = None
    url: str | None = None
    label: str | None = None
    #: a stored workflow to run instead of content or url, and its version (None: the newest)
    stored_name: str | None = None
    stored_version: int | None = None
    #: (name, value) for the workflow's parameters, as sent
    arguments: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Handle:
    """What submit answers."""

    global_id: str
    workflow_id: int
    label: str | None
    request_id: str | None


def submit(api: ApiContext, caller: Verified, f: SubmissionFields) -> Handle:
    """Validate, apply the overrides and store the workflow; returns once it is committed."""
    owner = named_user(caller, f.user, "submit")
    for wire, value in (("workflowId", f.label), ("id", f.request_id), ("experimentId", f.experiment_id),
                        ("publishMetadataTo", f.publish_metadata_to)):
        if value is not None and len(value) > LENGTHS[wire]:
            raise LimitExceeded(f"{wire} is {len(value)} characters long; at most {LENGTHS[wire]} are allowed")
    level = None
    if f.event_level is not None:
        try:
            level = EventLevel.parse(f.event_level).name
        except KeyError:
            raise ConfigError(f"invalid eventLevel {f.event_level!r}: expected one of "
                              f"{', '.join(lv.name for lv in EventLevel)}") from None
    if f.priority is not None and not PRIORITY_RANGE[0] <= f.priority <= PRIORITY_RANGE[1]:
        raise ConfigError(f"priority {f.priority} is out of range: from {PRIORITY_RANGE[0]:,} to "
                          f"{PRIORITY_RANGE[1]:,}")
    allowed = api.settings.events.metadata_destinations
    if f.publish_metadata_to is not None and (why := metadata_destination_problem(f.publish_metadata_to, allowed)):
        raise ConfigError(why)
    given = _arguments(f)
    with api.sessions() as s:
        if owner != caller.name:
            queries.user_by_name(s, owner)  # an admin submitting for a user that does not exist: NotFound
        earlier = _earlier(s, owner, f)
        origin, stored_text = _stored(s, f)
    if stored_text is not None:
        source, filename = stored_text.encode("utf-8", "surrogatepass"), f"{origin[0]}@{origin[1]}"
    else:
        source, filename = _source(api, f)
    # the description is kept verbatim: as the client sent the text, or as fetched
    descriptor = (f.content if f.content is not None else stored_text if stored_text is not None
                  else source.decode("utf-8", "replace"))
    spec = load_description(source, api.settings, filename=filename)
    del source  # a copy of the description: it is stored as ``descriptor``
    # file arguments arrive as their content: the server reads no file named by a client
    spec = bind(spec, given, api.settings.limits)
    if earlier is not None:
        return _same_request(earlier, f, descriptor, level, spec.arguments)
    if len(spec.name) > 200:
        raise LimitExceeded(f"workflow name is {len(spec.name)} characters long; at most 200 are allowed")
    if f.publish_metadata_to is None and spec.publish_metadata_to is not None:
        if why := metadata_destination_problem(spec.publish_metadata_to, allowed):
            raise ConfigError(f"{filename}: {why}")
    accepted = api.engine.submit(spec, descriptor, owner, label=f.label,
                                 request_id=f.request_id, experiment_id=f.experiment_id, event_level=level,
                                 priority=f.priority, publish_metadata_to=f.publish_metadata_to, origin=origin)
    return Handle(accepted.global_id, accepted.workflow_id, f.label, f.request_id)


def _arguments(f: SubmissionFields) -> dict[str, str]:
    """The arguments as a mapping; refuses a repeated, misnamed or excess one (ArgumentError, LimitExceeded)."""
    return parse_assignments(f"{name}={value}" for name, value in f.arguments)


def _stored(s: Any, f: SubmissionFields) -> tuple[tuple[str, int] | None, str | None]:
    """``((name, version), description)`` of the stored workflow the submission names, else (None, None)."""
    if f.stored_name is None:
        if f.stored_version is not None:
            raise ConfigError("storedVersion needs storedName")
        return None, None
    if f.content is not None or f.url is not None:
        raise ConfigError("give storedName, workflowContent or workflowUrl: only one of them")
    row = stored.get(s, stored.check_name(f.stored_name), f.stored_version)
    return (row.name, row.version), row.descriptor


def _earlier(s: Any, owner: str, f: SubmissionFields) -> Any:
    """The row of an earlier submission with the same request id; refuses a label already in use."""
    from broker.persistence.models import User

    owner_id = s.execute(select(User.id).where(User.name == owner)).scalar()
    if owner_id is None:
        return None
    if f.request_id is not None:
        row = s.execute(select(Workflow.id, Workflow.global_id, Workflow.label, Workflow.descriptor_sha256,
                               Workflow.experiment_id, Workflow.event_level, Workflow.priority,
                               Workflow.publish_metadata_to, Workflow.arguments).where(
            Workflow.owner_id == owner_id, Workflow.request_id == f.request_id)).first()
        if row is not None:
            return row
    if f.label is not None:
        taken = s.execute(select(Workflow.global_id).where(Workflow.owner_id == owner_id,
                                                           Workflow.label == f.label)).scalar()
        if taken is not None:
            raise StateError(f"workflowId {f.label!r} is already used by workflow {taken} of user {owner}")
    return None


def _same_request(row: Any, f: SubmissionFields, descriptor: str, level: str | None,
                  arguments: tuple[tuple[str, str], ...] | None) -> Handle:
    """The earlier workflow's handle when this submission repeats it: the same description (SHA-256) and
    every field given now equal to the stored one; a different submission under the same request id is
    refused, so a client's mix-up is not mistaken for a retry."""
    given = {
        "the description (SHA-256)": (hashlib.sha256(descriptor.encode("utf-8", "surrogatepass")).hexdigest(),
                                      row.descriptor_sha256),
        "workflowId": (f.label, row.label),
        "experimentId": (f.experiment_id, row.experiment_id),
        "eventLevel": (None if level is None else int(EventLevel[level]), row.event_level),
        "priority": (f.priority, row.priority),
        "publishMetadataTo": (f.publish_metadata_to, row.publish_metadata_to),
        "the arguments": ([list(a) for a in arguments] if arguments else None, row.arguments or None),
    }
    differ = [name for name, (now, before) in given.items()
              if (now is not None or name == "the arguments") and now != before]
    if differ:
        raise ConfigError(f"request id {f.request_id!r} was used for workflow {row.global_id}, whose "
                          f"{', '.join(differ)} differ(s) from this submission's: use a new request id")
    return Handle(row.global_id, row.id, row.label, f.request_id)


def _source(api: ApiContext, f: SubmissionFields) -> tuple[bytes, str]:
    """The description's bytes and the name problems are reported under."""
    if f.content is not None and f.url is not None:
        raise ConfigError("give workflowContent or workflowUrl, not both")
    if f.content is not None:
        data = f.content.encode("utf-8", "surrogatepass")
        if len(data) > api.settings.limits.max_document_bytes:
            raise LimitExceeded(f"description of {len(data)} bytes is larger than the "
                                f"{api.settings.limits.max_document_bytes} bytes allowed ([limits] max_document_bytes)")
        return data, "<workflowContent>"
    if f.url is not None:
        return fetch(f.url, api.settings.api.workflow_urls, api.settings.limits.max_document_bytes), f.url
    raise ConfigError("a submission needs workflowContent (the description) or workflowUrl")


def fetch(url: str, allowed: tuple[str, ...], max_bytes: int) -> bytes:
    """The bytes at ``url`` if it lies under one of the ``allowed`` prefixes (file, http, https).

    Raises ConfigError for a URL outside every prefix (or of another scheme), NotFound when it cannot be
    read, LimitExceeded when it is larger than ``max_bytes``. Redirects are not followed.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("file", "http", "https"):
        raise ConfigError(f"workflowUrl {url!r}: only file, http and https URLs can be fetched")
    if not any(_under(url, prefix) for prefix in allowed):
        raise ConfigError(f"workflowUrl {url!r} is not under an allowed location ([api] workflow_urls"
                          + (": none configured)" if not allowed else ")"))
    try:
        if parsed.scheme == "file":
            with open(_file_path(url), "rb") as fh:
                data = fh.read(max_bytes + 1)
        else:
            opener = urllib.request.build_opener(_NoRedirect)
            with opener.open(url, timeout=FETCH_TIMEOUT) as response:
                data = response.read(max_bytes + 1)
    except OSError as exc:
        raise NotFound(f"workflowUrl {url!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) > max_bytes:
        raise LimitExceeded(f"workflowUrl {url!r} is larger than the {max_bytes} bytes allowed "
                            "([limits] max_document_bytes)")
    return data


def _file_path(url: str) -> Path:
    parsed = urllib.parse.urlsplit(url)
    if parsed.netloc not in ("", "localhost"):
        raise ConfigError(f"workflowUrl {url!r}: a file URL names no host")
    return Path(urllib.parse.unquote(parsed.path)).resolve()


def _under(url: str, prefix: str) -> bool:
    """Whether ``url`` lies under ``prefix``: files after resolving symlinks and '..', others textually."""
    if urllib.parse.urlsplit(prefix).scheme == "file" and urllib.parse.urlsplit(url).scheme == "file":
        try:
            base, path = _file_path(prefix), _file_path(url)
        except ConfigError:
            return False
        return path == base or base in path.parents
    parsed = urllib.parse.urlsplit(url)
    if ".." in parsed.path.split("/") or "%2e" in parsed.path.lower():
        return False
    return url.startswith(prefix if prefix.endswith("/") else prefix + "/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead outside the allowed prefixes: refuse to follow it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
