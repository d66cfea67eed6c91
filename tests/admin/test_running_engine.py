"""Archive and delete inside a running engine (as the API does), on SQLite and PostgreSQL: the workflows that
run meanwhile are not disturbed, and the records go through the engine's writer."""

from __future__ import annotations

import pytest

from broker.admin.archive import archive_workflows
from broker.admin.delete import Deleter, journal_for
from broker.admin.reader import read_archive
from broker.admin.selection import Keep, Selection
from broker.admin.targets import FileTarget
from broker.persistence.changes import DeleteWorkflows, Planned
from tests.admin.helpers import admin_events, example, gated
from tests.fixtures import wait_for


@pytest.mark.slow
def test_archiving_and_deleting_beside_running_workflows_leaves_them_undisturbed(running_broker, tmp_path):
    broker = running_broker
    engine = broker.engine
    gate = tmp_path / "gate"
    running = [broker.submit(gated(gate, f"g{i}"), "alice") for i in range(3)]
    for workflow_id in running:
        wait_for(lambda i=workflow_id: broker.node_states(i).get("wait") == "running", what="a gated node to run")
    finished = [broker.run(example("output-sweep.xml"), "bob")[0] for _ in range(3)]
    finished_gids = [broker.workflow(i).global_id for i in finished]
    deleter = Deleter(engine.sessions, engine, "admin:root", workdir_root=engine.workdir,
                      journal=journal_for(engine.workdir, broker.url), require_drained=False,
                      forget=engine.forget)
    target = FileTarget(tmp_path / "archives")

    report = archive_workflows(target, Selection(keep=Keep(), delete_after=True), deleter,
                               max_file_bytes=1024**2)

    assert sorted(report.deleted) == sorted(finished_gids)
    assert {gid for gid, _ in report.skipped} == {broker.workflow(i).global_id for i in running}
    for gid in finished_gids:
        assert read_archive(target, f"{gid}.xml").fields["owner"] == "bob"
    gate.touch()
    for workflow_id in running:
        assert broker.wait(workflow_id) == "succeeded"
        events = broker.events(workflow_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "a gap in a running workflow's events"
    # the writer has recorded one event per deletion and the summary, after the engine's own events
    wait_for(lambda: len([e for e in admin_events(engine.sessions) if e.workflow_id is None]) == 4,
             what="the admin events")
    assert admin_events(engine.sessions)[-1].properties["deleted"] == 3
    # the engine goes on accepting and running work
    assert broker.run(example("hello.xml"), "bob")[1] == "succeeded"


def test_the_engine_deletes_through_its_writer_and_records_the_deletion_in_the_same_commit(running_broker, tmp_path):

    broker = running_broker
    engine = broker.engine
    gate = tmp_path / "gate"
    running = broker.submit(gated(gate, "g"), "alice")
    wait_for(lambda: broker.node_states(running).get("wait") == "running", what="the gated node to run")
    done = broker.run(example("hello.xml"), "bob")[0]
    planned = tuple(Planned(i, broker.workflow(i).global_id) for i in (done, running))

    answer = engine.delete_workflows(DeleteWorkflows(planned, "admin:root", "delete both",
                                                       skipped=("wf-x",), reasons=("it was running",)))

    assert answer.workflow_ids == (done,)
    assert answer.deletion.deleted == (planned[0].global_id,)
    assert answer.deletion.skipped == ("wf-x", planned[1].global_id)
    assert broker.workflow(done) is None and broker.workflow(running) is not None
    # the record was committed with the rows: it is there when the call returns
    record = admin_events(engine.sessions)[-1]
    assert (record.actor, record.message) == ("admin:root", f"delete both: deleted 1 workflow(s), skipped 2: wf-x, "
                                                            f"{planned[1].global_id}")
    assert record.properties["skipped_reasons"][0] == "it was running"
    gate.touch()
    assert broker.wait(running) == "succeeded"
