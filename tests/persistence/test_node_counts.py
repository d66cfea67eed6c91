"""Revision 0011: the writer commits each workflow's node counts (work-carrying nodes, ended ones) in its row,
in the transactions that change its nodes; status reads take a workflow's progress from there without the
engine's memory; workflows stored before the revision are counted by the migration (and, when still
unwritten, by the status read)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, insert, select, update

from broker.persistence import migrate, queries
from broker.persistence.db import make_engine
from broker.persistence.models import Node, User, Workflow, utcnow
from tests.engine.helpers import Broker, workflow
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow


def committed(broker: Broker, workflow_id: int) -> tuple[int | None, int | None]:
    with broker.sessions() as s:
        return s.execute(select(Workflow.nodes_total, Workflow.nodes_done).where(Workflow.id == workflow_id)).one()


def counted(broker: Broker, workflow_id: int) -> tuple[int, int]:
    with broker.sessions() as s:
        base = select(func.count()).select_from(Node).where(Node.workflow_id == workflow_id, queries.counted())
        return (s.execute(base).scalar_one(),
                s.execute(base.where(Node.state.in_(queries.DONE_STATES))).scalar_one())


def test_the_row_holds_the_counts_the_writer_committed_at_every_step(migrated_url, tmp_path):
    gate = tmp_path / "gate"
    broker = Broker(migrated_url, tmp_path).start()
    try:
        wf = broker.submit(workflow(f"""
          <node id="a"><payload type="sh">true</payload></node>
          <node id="bad"><payload type="sh">exit 3</payload></node>
          <node id="gated"><payload type="sh">i=0; while [ ! -e "{gate}" ] &amp;&amp; [ $i -lt 3000 ]; do sleep 0.01;
            i=$((i+1)); done</payload></node>
          <sweep id="sweep"><dependsOn node="a"/><param name="x"><range from="1" to="3"/></param>
            <body><node id="step"><payload type="sh">true</payload></node></body></sweep>
          <node id="after"><dependsOn node="gated"/><payload type="sh">true</payload></node>"""))
        wait_for(lambda: broker.node_states(wf).get("gated") == "running"
                 and broker.node_states(wf).get("sweep") == "succeeded", what="the sweep done, the gate waiting")
        assert committed(broker, wf) == counted(broker, wf)
        total, done = committed(broker, wf)
        assert total > done > 0  # the expanded sweep's members are counted, the sweep itself no longer
        gate.touch()
        broker.wait(wf)
        assert committed(broker, wf) == counted(broker, wf) == (total, total)
        gid = broker.workflow(wf).global_id
        with broker.engine.db.connect() as c:
            # without the engine's board: from the row (changed here to show that it is the row being read)
            c.execute(update(Workflow).where(Workflow.id == wf).values(nodes_total=4, nodes_done=1))
            c.commit()
            assert queries.current_status(c, gid, None).progress == 25.0
            # a row no broker of revision 0011 wrote yet: counted from its nodes
            c.execute(update(Workflow).where(Workflow.id == wf).values(nodes_total=None, nodes_done=None))
            c.commit()
            assert queries.current_status(c, gid, None).progress == 100.0
    finally:
        broker.stop()


def test_upgrading_to_0011_counts_the_nodes_of_older_workflows(db_url):
    migrate.upgrade(db_url, "0010")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            user_id = conn.execute(insert(User.__table__).returning(User.id),
                                   {"name": "alice", "role": "user", "created_at": utcnow()}).scalar_one()
            ids = []
            for gid, states in (("wf-0000000000aaaaaaaa", [("node", None, "succeeded"), ("node", None, "running"),
                                                          ("sweep", 2, "running"), ("member", None, "running"),
                                                          ("sweep", None, "waiting")]),
                                ("wf-0000000000bbbbbbbb", [])):
                wf_id = conn.execute(insert(Workflow.__table__).returning(Workflow.id), {
                    "global_id": gid, "owner_id": user_id, "name": "w", "descriptor": "", "descriptor_sha256": "",
                    "plan": "{}", "event_level": 1, "priority": 0, "state": "running", "cancel_requested": False,
                    "event_seq": 0, "submitted_at": utcnow()}).scalar_one()
                ids.append(wf_id)
                for i, (kind, members, state) in enumerate(states):
                    conn.execute(insert(Node.__table__), {
                        "workflow_id": wf_id, "path": f"n{i}", "template": f"n{i}", "kind": kind, "members": members,
                        "state": state, "priority": 0, "attempt": 0, "created_at": utcnow()})
        migrate.upgrade(db_url)
        with engine.connect() as conn:
            rows = dict((wid, (t, d)) for wid, t, d in conn.execute(
                select(Workflow.id, Workflow.nodes_total, Workflow.nodes_done)).all())
        # execute nodes and the unexpanded sweep count; the expanded sweep and the member group do not
        assert rows == {ids[0]: (3, 1), ids[1]: (0, 0)}
        migrate.downgrade(db_url, "0010")
        migrate.upgrade(db_url)
    finally:
        engine.dispose()
