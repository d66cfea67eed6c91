"""Revision 0006: the attempts table, filled for nodes stored before it from what their node rows hold."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import insert, select

from broker.persistence import migrate
from broker.persistence.db import make_engine
from broker.persistence.models import Attempt, Node, User, Workflow, utcnow

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.timezone.utc)


def test_upgrading_to_0006_gives_each_launched_node_of_an_old_database_its_current_attempt(db_url):
    migrate.upgrade(db_url, "0005")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            user_id = conn.execute(insert(User.__table__).returning(User.id),
                                   {"name": "alice", "role": "user", "created_at": utcnow()}).scalar_one()
            wf_id = conn.execute(insert(Workflow.__table__).returning(Workflow.id), {
                "global_id": "wf-0000000000aaaaaaaa", "owner_id": user_id, "name": "w", "descriptor": "",
                "descriptor_sha256": "", "plan": "{}", "event_level": 1, "priority": 0, "state": "running",
                "cancel_requested": False, "event_seq": 0, "submitted_at": utcnow()}).scalar_one()
            base = {"workflow_id": wf_id, "kind": "node", "priority": 0, "created_at": utcnow(), "retries": 0}
            rows = [
                {"path": "done", "template": "done", "state": "succeeded", "attempt": 2, "host": "bob@cluster",
                 "job_id": "4711", "workdir": "/w/done/2", "exit_code": 0, "started_at": T0,
                 "finished_at": T0 + dt.timedelta(seconds=30), "message": None},
                {"path": "bad", "template": "bad", "state": "failed", "attempt": 1, "host": "localhost",
                 "job_id": "99", "workdir": "/w/bad/1", "exit_code": 2, "started_at": T0,
                 "finished_at": T0 + dt.timedelta(seconds=5), "message": "exit code 2"},
                {"path": "flying", "template": "flying", "state": "running", "attempt": 1, "host": "localhost",
                 "job_id": "7", "workdir": "/w/flying/1", "exit_code": None, "started_at": T0,
                 "finished_at": None, "message": None},
                {"path": "s[0]/x", "template": "s/x", "state": "succeeded", "attempt": 1, "host": "localhost",
                 "job_id": "8", "workdir": "/w/s@0/x/1", "exit_code": 0, "started_at": T0,
                 "finished_at": T0 + dt.timedelta(seconds=1), "message": None},
                {"path": "never", "template": "never", "state": "waiting", "attempt": 0, "host": None,
                 "job_id": None, "workdir": None, "exit_code": None, "started_at": None, "finished_at": None,
                 "message": None},
            ]
            conn.execute(insert(Node.__table__), [{**base, **r} for r in rows])
        migrate.upgrade(db_url)
        with engine.connect() as conn:
            got = {r.template: r for r in conn.execute(select(Attempt.__table__))}
            ids = dict(conn.execute(select(Node.path, Node.id)).all())
        assert set(got) == {"done", "bad", "flying", "s/x"}  # a node that never launched has no attempt
        done = got["done"]
        assert (done.node_id, done.number, done.outcome, done.host, done.account, done.job_id, done.exit_code) == (
            ids["done"], 2, "succeeded", "bob@cluster", "bob", "4711", 0)
        assert (got["bad"].outcome, got["bad"].exit_code, got["bad"].message) == ("failed", 2, "exit code 2")
        # an attempt in flight stays open: the broker's recovery ends it, as the same attempt
        assert (got["flying"].outcome, got["flying"].finished_at, got["flying"].number) == (None, None, 1)
        assert got["s/x"].node_id == ids["s[0]/x"] and got["s/x"].workflow_id == wf_id
        migrate.downgrade(db_url, "0005")
        migrate.upgrade(db_url)
    finally:
        engine.dispose()
