"""``broker run`` and ``broker resume`` on a real bus (ActiveMQ): what a consumer sees of a command's life.

Each command announces itself with SERVICE events (started, stopped: the stop is the last event it writes),
and it waits at exit for the outbox to drain, so a consumer has the final WORKFLOW_STATE as soon as the
command has exited.
"""

from __future__ import annotations

import signal

import pytest

from broker.events import document
from broker.events.routing import ALL_EVENTS_TOPIC
from tests.cli.helpers import DEADLINE, EXAMPLES, wait_for, waits_for, workflow
from tests.events.helpers import StompConsumer, all_sent

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


def bus(activemq, **settings: str) -> dict[str, str]:
    return {"BROKER_EVENTS_URL": activemq.stomp_url, **{f"BROKER_EVENTS_{k.upper()}": v for k, v in settings.items()}}


def service_events(messages, pid: int) -> list[str]:
    """(what) of the SERVICE events of the process ``pid``, in arrival order."""
    events = [document.parse(m.body) for m in messages if m.headers.get("eventType") == "SERVICE"]
    return [e.properties["what"] for e in events if e.properties["pid"] == pid]


def test_run_and_resume_announce_their_start_and_stop_on_the_bus(cli, activemq):
    consumer = StompConsumer(activemq.stomp_url, ALL_EVENTS_TOPIC).start()
    try:
        path = cli.file("hello.xml", (EXAMPLES / "hello.xml").read_text())
        run = cli.start("run", str(path), env={**cli.env, **bus(activemq)})
        out, err = run.communicate(timeout=DEADLINE)
        assert run.returncode == 0, err
        (wf,) = cli.workflows()
        messages = consumer.wait(lambda ms: len(service_events(ms, run.pid)) == 2 and ms,
                                 "the run's SERVICE events")
        assert service_events(messages, run.pid) == ["started", "stopped"]
        # (other brokers' SERVICE events may be on the admins' topic too: only this run's count)
        events = [document.parse(m.body) for m in messages if m.headers.get("eventType") != "TEST_END"]
        mine = [e for e in events if e.workflow_id == wf.global_id
                or (e.type.value == "SERVICE" and e.properties["pid"] == run.pid)]
        kinds = [(e.type.value, e.properties.get("pid")) for e in mine]
        # the start comes before the workflow's events, the stop after its final state
        assert kinds[0] == ("SERVICE", run.pid) and kinds[-1] == ("SERVICE", run.pid)
        assert mine[-1].message.startswith("broker run stopped on ") and mine[-1].workflow_id is None
        assert mine[-2].type.value == "WORKFLOW_STATE" and mine[-2].state == "succeeded"

        # a run killed while its node waits: it announced its start, never its stop; the resume does both
        gate = cli.tmp / "go"
        path = cli.file("gated.xml", workflow(f'<node id="w">{waits_for(gate)}</node>'))
        killed = cli.start("run", str(path), env={**cli.env, **bus(activemq)})
        wait_for(lambda: len(cli.workflows()) == 2 and cli.nodes(cli.workflows()[-1].id)["w"].state == "running",
                 what="the gated node to run")
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=DEADLINE)
        gated = cli.workflows()[-1]
        gate.touch()
        resumed = cli.start("resume", gated.global_id, env={**cli.env, **bus(activemq)})
        _, err = resumed.communicate(timeout=DEADLINE)
        assert resumed.returncode == 0, err
        messages = consumer.wait(lambda ms: len(service_events(ms, resumed.pid)) == 2 and ms,
                                 "the resume's SERVICE events")
        assert service_events(messages, resumed.pid) == ["started", "stopped"]
        # (its start may come twice: delivery is at least once, and it was killed between a receipt and a mark)
        assert set(service_events(messages, killed.pid)) == {"started"}
    finally:
        consumer.disconnect()
    wait_for(lambda: all_sent(cli.sessions), what="every outbox row sent")


def test_without_a_bus_a_run_writes_no_outbox_rows_and_admin_state_says_no_bus(sqlite_cli):
    from sqlalchemy import func, select

    from broker.persistence.models import Event, Outbox

    cli = sqlite_cli
    path = cli.file("hello.xml", (EXAMPLES / "hello.xml").read_text())
    assert cli("run", str(path)).returncode == 0
    (wf,) = cli.workflows()
    with cli.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event)) > 5
        assert s.scalar(select(func.count()).select_from(Outbox)) == 0
    state = cli("admin", "state")
    assert state.returncode == 0, state.stderr
    assert state.stdout.splitlines()[0] == ("broker: not running on this database; events: no bus ([events] url is "
                                            "empty: events are stored, never published)")
    assert '"bus": false' in cli("admin", "state", "--json").stdout


def _many_events(members: int) -> str:
    """A sweep of ``members`` trivial members at DEBUG: about 14 outbox rows each."""
    values = "".join(f"<value>{i}</value>" for i in range(members))
    return workflow(f"""<sweep id="s"><param name="i">{values}</param>
        <body><node id="n"><payload type="sh">true</payload></node></body></sweep>""", "many").replace(
        'name="many"', 'name="many" eventLevel="DEBUG"', 1)


def test_run_waits_at_exit_until_a_consumer_can_see_its_final_state_and_says_what_is_left(cli, activemq):
    # a backlog first: a run whose bus is down leaves its events in the outbox, and says how many
    dead = cli.file("many.xml", _many_events(100))
    first = cli("run", str(dead), env={"BROKER_EVENTS_URL": "stomp://127.0.0.1:9",
                                        "BROKER_EVENTS_EXIT_DRAIN_TIMEOUT": "0.5"})
    assert first.returncode == 0, first.stderr
    with cli.sessions() as s:
        from sqlalchemy import func, select

        from broker.persistence.models import Outbox

        left = s.scalar(select(func.count()).select_from(Outbox).where(Outbox.sent_at.is_(None)))
    assert left > 1000
    assert (f"broker: {left} event messages not yet published on the bus after waiting up to 0.5 s ([events] "
            "exit_drain_timeout); the next broker started on this database publishes them\n") in first.stderr

    # then a short run on the real bus, one message per bus transaction (slow) and a stop_timeout far too
    # short for the backlog: the run's own final state is published last, and only the exit drain gets it out
    consumer = StompConsumer(activemq.stomp_url, ALL_EVENTS_TOPIC).start()
    try:
        path = cli.file("hello.xml", (EXAMPLES / "hello.xml").read_text())
        run = cli.start("run", str(path), env={**cli.env, **bus(activemq, window="1", stop_timeout="0.1",
                                                                exit_drain_timeout="120")})
        _, err = run.communicate(timeout=DEADLINE * 3)
        assert run.returncode == 0, err
        assert "not yet published" not in err
        assert all_sent(cli.sessions)
        hello = cli.workflows()[-1]
        final = consumer.wait(lambda ms: [m for m in ms if m.headers.get("workflowId") == hello.global_id
                                          and m.headers.get("eventType") == "WORKFLOW_STATE" and "succeeded" in m.body],
                              "the final WORKFLOW_STATE", deadline=5)
        assert final
    finally:
        consumer.disconnect()
