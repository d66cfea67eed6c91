"""Event pages answered without spyne (getStatusInfo, getStatusInfoForUser) give, byte for byte, what spyne
answers; faults mean the same; requests the fast path does not plainly recognise go to spyne.

Both edges run in process on one engine and database (as in test_fastpath.py). Over HTTP every client test
of the event pages in tests/api goes through the fast path.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time

import pytest
from sqlalchemy import insert, select

from broker.api.eventpage import OPERATIONS, page_handler
from broker.persistence.models import Event, Workflow
from tests.api.test_fastpath import ENV, Edges, _call, fault
from tests.api.helpers import add_users
from tests.engine.helpers import Broker, workflow

PAGE = 200
#: the target of issue 15: a page of 200 events in under this much server time
PAGE_TARGET_S = 0.020


class PageEdges(Edges):
    def __init__(self, broker):
        super().__init__(broker)
        handler = page_handler(broker.engine.db, broker.settings.api.page_size)
        self.pages = 0

        def counting(tree, environ):
            answer = handler(tree, environ)
            self.pages += answer is not None
            return answer

        self.fast.fast.update({("/broker", operation): counting for operation in OPERATIONS})

    def fast_call(self, call: str, user: str) -> tuple[str, bytes]:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{ENV}" '
                f'xmlns:c="urn:workflow-broker:core:v1"><s:Body>{call}</s:Body></s:Envelope>').encode()
        return _call(self.fast, body, user)


@pytest.fixture
def running(migrated_url, tmp_path):
    add_users(migrated_url)
    broker = Broker(migrated_url, tmp_path).start()
    try:
        yield broker, PageEdges(broker)
    finally:
        broker.stop()


def page_call(last_id: int | None = None) -> str:
    argument = "" if last_id is None else f"<c:lastId>{last_id}</c:lastId>"
    return f"<c:getStatusInfo>{argument}</c:getStatusInfo>"


def user_call(user: str | None, last_id: int | None = 0) -> str:
    name = "" if user is None else f"<c:user>{user}</c:user>"
    last = "" if last_id is None else f"<c:lastId>{last_id}</c:lastId>"
    return f"<c:getStatusInfoForUser>{name}{last}</c:getStatusInfoForUser>"


def odd_events(broker, workflow_id: int) -> None:
    """Events of every shape a page carries: progress as int and float, output properties needing escapes,
    texts with characters XML cannot carry, a service-level event (no workflow), no message, no state."""
    now = dt.datetime.now(dt.timezone.utc)
    rows = [
        dict(workflow_id=workflow_id, seq=1001, node_path="a", actor="elf", level=3, type="NODE_PROGRESS",
             properties={"percent": 42}),
        dict(workflow_id=workflow_id, seq=1002, node_path="a", actor="elf", level=3, type="NODE_PROGRESS",
             properties={"percent": 12.5, "note": "x"}),
        dict(workflow_id=workflow_id, seq=1003, node_path="a/b[3]", actor="elf", level=1, type="NODE_OUTPUT",
             message='out: <&> "q"\r\n\tcafé \x01', properties={"v": [1, "<é>", None], "z<&>": {"k": 1.5}}),
        dict(workflow_id=None, seq=None, node_path=None, actor="service", level=0, type="SERVICE",
             message="service-level", properties=None, time=now.replace(microsecond=0)),
        dict(workflow_id=workflow_id, seq=1004, node_path=None, actor="user:alice", level=4, type="WORKFLOW_STATE",
             state="running", properties={}),
    ]
    with broker.sessions() as s, s.begin():
        for row in rows:
            s.execute(insert(Event).values(**row))


@pytest.mark.slow
def test_pages_are_the_same_bytes_as_spyne_writes_for_every_caller_and_every_shape(running):
    broker, edges = running
    alice, _ = broker.run(workflow("""
      <node id="a"><payload type="sh">echo hi</payload></node>
      <node id="b"><payload type="sh">exit 3</payload></node>"""))
    broker.run(workflow('<node id="c"><payload type="sh">true</payload></node>'), owner="bob")
    odd_events(broker, alice)
    calls = [(page_call(), "alice"), (page_call(0), "alice"), (page_call(-5), "alice"), (page_call(3), "alice"),
             (page_call(), "root"), (page_call(2), "bob"), (page_call(10**12), "alice"),
             (user_call(None), "alice"), (user_call("alice", 1), "alice"), (user_call("bob"), "root"),
             (user_call("alice", None), "root"), (user_call(""), "bob")]
    for call, user in calls:
        (spyne_status, spyne), (fast_status, fast) = edges.both(call, user)
        assert spyne_status == fast_status == "200 OK", (call, user, spyne)
        assert fast == spyne, (call, user, spyne, fast)
    assert edges.pages == len(calls)
    (_, answer), _ = edges.both(page_call(), "root")
    assert b"<s0:progress>42</s0:progress>" in answer and b"<s0:progress>12.5</s0:progress>" in answer
    assert b"service-level" in answer and b"caf\xc3\xa9 \xef\xbf\xbd" in answer
    (_, answer), _ = edges.both(page_call(), "alice")
    assert b"service-level" not in answer and b"<s0:state>succeeded</s0:state>" in answer


@pytest.mark.slow
def test_faults_mean_the_same_and_requests_not_plainly_recognised_go_to_spyne(running):
    broker, edges = running
    broker.run(workflow('<node id="a"><payload type="sh">true</payload></node>'))
    for call, user, code in [(user_call("bob"), "alice", "Client.NotAuthorized"),
                             (user_call("nobody"), "root", "Client.NotFound")]:
        (spyne_status, spyne), (fast_status, fast) = edges.both(call, user)
        assert spyne_status == fast_status and fast == spyne, (call, spyne, fast)
        assert fault(fast)[0] == code
    handled = edges.pages
    odd = [page_call().replace("<c:getStatusInfo>", '<c:getStatusInfo a="1">'),
           "<c:getStatusInfo><c:lastId>1</c:lastId><c:lastId>2</c:lastId></c:getStatusInfo>",
           "<c:getStatusInfo><c:lastId>x</c:lastId></c:getStatusInfo>",
           "<c:getStatusInfo><c:lastId>99999999999999999999</c:lastId></c:getStatusInfo>",
           "<c:getStatusInfo><c:other/></c:getStatusInfo>",
           "<c:getStatusInfoForUser><c:lastId>1</c:lastId><c:user>alice</c:user></c:getStatusInfoForUser>",
           '<x:getStatusInfo xmlns:x="urn:other"><x:lastId>1</x:lastId></x:getStatusInfo>']
    for call in odd:
        (spyne_status, spyne), (fast_status, fast) = edges.both(call)
        assert (fast_status, fast) == (spyne_status, spyne), call
    assert edges.pages == handled


@pytest.mark.slow
def test_a_page_of_200_events_takes_under_20_ms_of_server_time(running):
    broker, edges = running
    wf, _ = broker.run(workflow('<node id="a"><payload type="sh">true</payload></node>'))
    with broker.sessions() as s, s.begin():
        s.execute(insert(Event), [dict(workflow_id=wf, seq=2000 + i, node_path="a", actor="elf", level=3,
                                       type="NODE_PROGRESS", message=f"step {i}", properties={"percent": i % 100})
                                  for i in range(PAGE)])
        assert s.execute(select(Workflow.id)).scalar_one() == wf
    assert broker.settings.api.page_size == PAGE
    body = page_call(0)
    answers, times, cpu = [], [], []
    for _ in range(15):
        started, started_cpu = time.perf_counter(), time.thread_time()
        answers.append(edges.fast_call(body, "alice"))
        times.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    assert answers[0][1].count(b"<tns:return>") == PAGE and len(set(answers)) == 1
    # on a machine shared with other work a call's wall time includes waiting for a CPU: the best call shows
    # what a page costs, the CPU time of the serving thread what it costs every time
    assert min(times) < PAGE_TARGET_S and statistics.median(cpu) < PAGE_TARGET_S, (sorted(times), sorted(cpu))
