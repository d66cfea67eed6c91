"""The tables of requests (broker.persistence.requests): mapped on the models' metadata, kept apart so that
models.py stays small. Imported by the migration code (and by whatever reads or writes requests), so that
``Base.metadata`` knows them wherever the schema is compared or created.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from broker.persistence.models import Base, BigId, partial_index, utcnow


class Request(Base):
    """A change another process asks the active writer to make, applied once (broker.persistence.requests)."""

    __tablename__ = "requests"
    __table_args__ = (partial_index("ix_requests_pending", "id", where="state = 'pending'"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  #: submit, resume, cancel, restart, delete, archive
    requested_by: Mapped[str] = mapped_column(String(64))  #: "user:<name>" or "admin:<name>"
    account: Mapped[str | None] = mapped_column(String(64))  #: the asking process's OS account (None: API)
    payload: Mapped[str] = mapped_column(Text)  #: the kind's arguments (JSON)
    workflow_gid: Mapped[str | None] = mapped_column(String(64))  #: reserved (submit) or concerned workflow
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="pending")  #: pending, applied, failed, withdrawn
    result: Mapped[str | None] = mapped_column(Text)  #: the writer's answer (JSON), or {"reason": ...}
    error: Mapped[str | None] = mapped_column(Text)
    applied_at: Mapped[dt.datetime | None]
    applied_by: Mapped[str | None] = mapped_column(String(300))  #: the holder line of the writer


class WriterInfo(Base):
    """Who the active writer is (one row, id 1), for the processes that hand it work; liveness is the lock's."""

    __tablename__ = "writer_info"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    holder: Mapped[str] = mapped_column(String(300))  #: "broker run on HOST, pid N"
    pid: Mapped[int] = mapped_column(Integer)
    account: Mapped[str] = mapped_column(String(64))  #: its OS account
    runs_as: Mapped[str] = mapped_column(String(16))  #: own, mapped (root), mapped-own (see broker.applier)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
