"""Revision 0004: each workflow's work root, derived for workflows stored before it from their nodes' work
directories (local attempts first: a remote attempt's directory lies under its host's scratch)."""

from __future__ import annotations

from sqlalchemy import insert, select

from broker.persistence import migrate
from broker.persistence.db import make_engine
from broker.persistence.models import Node, User, Workflow, utcnow


def _workflow(conn, user_id: int, gid: str, nodes: list[tuple[str, str | None, str | None]]) -> int:
    wf_id = conn.execute(insert(Workflow.__table__).returning(Workflow.id), {
        "global_id": gid, "owner_id": user_id, "name": "w", "descriptor": "", "descriptor_sha256": "",
        "plan": "{}", "event_level": 1, "priority": 0, "state": "running", "cancel_requested": False,
        "event_seq": 0, "submitted_at": utcnow()}).scalar_one()
    conn.execute(insert(Node.__table__), [
        {"workflow_id": wf_id, "path": path, "template": path, "kind": "node", "state": "succeeded", "priority": 0,
         "attempt": 1, "host": host, "workdir": workdir, "created_at": utcnow()} for path, host, workdir in nodes])
    return wf_id


def test_upgrading_to_0004_derives_the_work_root_of_older_workflows_from_their_local_attempts(db_url):
    migrate.upgrade(db_url, "0003")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            # columns as of 0003: the model's work_root is left out of these inserts
            user_id = conn.execute(insert(User.__table__).returning(User.id),
                                   {"name": "alice", "role": "user", "created_at": utcnow()}).scalar_one()
            g1, g2, g3 = "wf-0000000000aaaaaaaa", "wf-0000000000bbbbbbbb", "wf-0000000000cccccccc"
            mixed = _workflow(conn, user_id, g1, [
                ("remote1", "cluster", f"/scratch/alice/{g1}/remote1/1"),
                ("remote2", "cluster", f"/scratch/alice/{g1}/remote2/1"),
                ("local", "localhost", f"/data/work/{g1}/local/1"),
                ("never", None, None)])
            remote = _workflow(conn, user_id, g2, [("r", "cluster", f"/scratch/alice/{g2}/r/2")])
            unlaunched = _workflow(conn, user_id, g3, [("n", None, None)])
        migrate.upgrade(db_url)
        with engine.connect() as conn:
            roots = dict(conn.execute(select(Workflow.id, Workflow.work_root)).all())
        assert roots == {mixed: "/data/work", remote: "/scratch/alice", unlaunched: None}
        migrate.downgrade(db_url, "0003")
        migrate.upgrade(db_url)
    finally:
        engine.dispose()
