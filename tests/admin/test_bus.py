"""A deleted workflow's final events still reach bus consumers: deletion waits for its outbox to drain."""

from __future__ import annotations

import pytest

from broker.events import document
from broker.events.routing import ALL_EVENTS_TOPIC
from tests.admin.helpers import admin_events, example, run_workflows, workflow_rows
from tests.events.helpers import FAST, StompConsumer, all_sent, unique_user

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes

#: a STOMP URL nothing listens on: the relay of the engine cannot publish there
DEAD_BUS = "stomp://127.0.0.1:9"


def test_a_workflow_whose_events_are_unpublished_is_kept_until_they_reach_the_bus(sqlite_admin_cli, activemq):
    cli = sqlite_admin_cli
    user = unique_user()
    events = {**FAST, "url": DEAD_BUS, "stop_timeout": 0.2}
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), user)}, events=events)
    gid = made.gids["hello"]
    consumer = StompConsumer(activemq.stomp_url, f"/topic/broker.user.{user}").start()
    # the deletion's own record has no workflow: it goes to the admins' topic only
    records = StompConsumer(activemq.stomp_url, ALL_EVENTS_TOPIC, selector="eventType = 'ADMIN_ACTION'").start()
    try:
        bus = {"BROKER_EVENTS_URL": activemq.stomp_url}
        refused = cli("admin", "delete", "--id", gid, "--yes", env=bus)
        assert refused.returncode == 3 and "not yet published" in refused.stderr
        kept = cli("admin", "delete", "--completed", "--yes", env=bus)
        assert kept.returncode == 0 and f"skipped: workflow {gid} has events not yet published" in kept.stdout
        assert gid in workflow_rows(cli.sessions)

        done = cli("admin", "delete", "--id", gid, "--yes", "--wait", "30", env=bus)

        assert done.returncode == 0, done.stdout + done.stderr
        assert gid not in workflow_rows(cli.sessions)
        final = consumer.wait(lambda ms: [m for m in ms if m.headers.get("workflowId") == gid
                                          and m.headers.get("eventType") == "WORKFLOW_STATE"
                                          and "succeeded" in m.body], "the final WORKFLOW_STATE")
        assert final
        assert admin_events(cli.sessions)[-1].properties["deleted_ids"] == [gid]
        # --wait also publishes the deletion's own ADMIN_ACTION, before the command exits
        assert all_sent(cli.sessions)
        record = records.wait(lambda ms: [document.parse(m.body) for m in ms if gid in m.body],
                              "the deletion's ADMIN_ACTION", deadline=5)
        assert record[0].properties["deleted_ids"] == [gid] and record[0].workflow_id is None
    finally:
        consumer.disconnect()
        records.disconnect()
