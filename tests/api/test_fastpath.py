"""getStatusInfoForId answered without spyne gives, byte for byte, what spyne answers; faults mean the same.

Both edges run in process on one engine and database: one with the fast handler, one sending every call
through spyne. (Over HTTP, every client test of getStatusInfoForId in tests/api goes through the fast path.)
"""

from __future__ import annotations

import base64
import io

import pytest
from lxml import etree
from sqlalchemy import update

from broker.api.app import build
from broker.api.context import ApiContext
from broker.api.edge import Edge, Route
from broker.api.fastpath import OPERATION, StatusReader, status_handler
from broker.api.identity import Authenticator
from broker.persistence.models import Node
from tests.api.helpers import USERS, add_users
from tests.engine.helpers import Broker, workflow
from tests.fixtures import wait_for

ENV = "http://schemas.xmlsoap.org/soap/envelope/"
MAX = 1024 * 1024


class Edges:
    def __init__(self, broker: Broker):
        api = ApiContext(broker.settings, broker.engine)
        routes = [Route(path, app, namespace, wsdl)
                  for path, (app, namespace, wsdl) in build(api, "http://localhost:8080", MAX).items()]
        auth = Authenticator(broker.engine.sessions, 60.0)
        self.spyne = Edge(routes, auth, MAX)
        # one ApiContext: both edges serve the same cached estimates, so their answers can be compared
        handler = status_handler(StatusReader(broker.engine.db, broker.engine.progress), api)
        self.fast = Edge(routes, auth, MAX)
        self.handled = 0

        def counting(tree, environ):
            answer = handler(tree, environ)
            self.handled += answer is not None
            return answer

        self.fast.fast[("/broker", OPERATION)] = counting

    def both(self, call: str, user: str = "alice") -> tuple[tuple[str, bytes], tuple[str, bytes]]:
        body = (f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{ENV}" '
                f'xmlns:c="urn:workflow-broker:core:v1"><s:Body>{call}</s:Body></s:Envelope>').encode()
        return _call(self.spyne, body, user), _call(self.fast, body, user)


def _call(edge: Edge, body: bytes, user: str) -> tuple[str, bytes]:
    credentials = base64.b64encode(f"{user}:{USERS[user][0]}".encode()).decode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/broker", "CONTENT_TYPE": "text/xml; charset=utf-8",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
               "HTTP_AUTHORIZATION": f"Basic {credentials}", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http",
               "SERVER_NAME": "localhost", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1", "QUERY_STRING": ""}
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = status

    answer = b"".join(edge(environ, start_response))
    return seen["status"], answer


def status_call(global_id: str, estimate: str | None = None) -> str:
    flag = "" if estimate is None else f"<c:estimate>{estimate}</c:estimate>"
    return f"<c:getStatusInfoForId><c:globalId>{global_id}</c:globalId>{flag}</c:getStatusInfoForId>"


def fault(answer: bytes) -> tuple[str, str, str]:
    root = etree.fromstring(answer)
    found = root.find(f".//{{{ENV}}}Fault")
    code = found.find("detail")[0].find("{urn:workflow-broker:core:v1}code").text
    return found.findtext("faultcode").split(":")[-1], found.findtext("faultstring"), code


@pytest.fixture
def running(migrated_url, tmp_path):
    add_users(migrated_url)
    broker = Broker(migrated_url, tmp_path).start()
    try:
        yield broker, Edges(broker)
    finally:
        broker.stop()


@pytest.mark.slow
def test_answers_are_the_same_bytes_for_workflows_and_nodes_in_every_situation(running, tmp_path):
    broker, edges = running
    gate = tmp_path / "gate"
    wf = broker.submit(workflow(f"""
      <node id="done"><payload type="sh">sleep 0.2</payload></node>
      <node id="failed"><payload type="sh">exit 3</payload></node>
      <node id="gated"><payload type="sh">i=0; while [ ! -e "{gate}" ] &amp;&amp; [ $i -lt 3000 ]; do sleep 0.01;
        i=$((i+1)); done</payload></node>
      <node id="later"><dependsOn node="gated"/><payload type="sh">true</payload></node>"""))
    wait_for(lambda: broker.node_states(wf)["gated"] == "running" and broker.node_states(wf)["failed"] == "failed"
             and broker.node_states(wf)["done"] == "succeeded", what="one node running, one failed, one done")
    gid = broker.workflow(wf).global_id
    with broker.sessions() as s, s.begin():  # a message that needs escaping, as a payload's could
        s.execute(update(Node).where(Node.workflow_id == wf, Node.path == "failed")
                  .values(message='exit 3: <&> "quoted"\r\n\tcafé \x01'))
    targets = [gid, f"{gid}/done", f"{gid}/failed", f"{gid}/gated", f"{gid}/later"]
    for target in targets:
        (spyne_status, spyne), (fast_status, fast) = edges.both(status_call(target))
        assert spyne_status == fast_status == "200 OK", (target, spyne)
        assert fast == spyne, (target, spyne, fast)
    # the control character XML cannot carry is U+FFFD in both (spyne, given it, answers an empty envelope)
    (_, spyne), (_, fast) = edges.both(status_call(f"{gid}/failed"))
    assert b"exit 3: &lt;&amp;&gt; \"quoted\"&#13;\n\tcaf\xc3\xa9 \xef\xbf\xbd" in fast
    assert b"<s0:progress>" not in fast.split(b"<s0:message>")[0]  # field order: message before progress
    # asked for, the running workflow's estimated end (from its ended node's duration: it ran 0.2 s), as spyne
    # writes it
    for flag in ("true", "1", "false"):
        (_, spyne), (_, fast) = edges.both(status_call(gid, flag))
        assert (b"<s0:estimatedEnd><s0:p10>" in fast) == (flag != "false") and fast == spyne, (flag, spyne, fast)
    (gate).touch()
    assert broker.wait(wf).value == "failed"
    for target in targets:
        (_, spyne), (_, fast) = edges.both(status_call(target))
        assert fast == spyne, (target, spyne, fast)
    assert edges.handled == 2 * len(targets) + 4


@pytest.mark.slow
def test_faults_mean_the_same_and_other_users_workflows_stay_hidden(running):
    broker, edges = running
    wf, _ = broker.run(workflow('<node id="a"><payload type="sh">true</payload></node>'), owner="bob")
    gid = broker.workflow(wf).global_id
    for target, user in [("wf-0000000000000000zz", "alice"), ("nonsense", "alice"), ("", "alice"),
                         (gid, "alice"), (f"{gid}/a", "alice"), (f"{gid}/nope", "bob")]:
        (spyne_status, spyne), (fast_status, fast) = edges.both(status_call(target), user)
        assert spyne_status == fast_status == "500 Internal Server Error", (target, spyne)
        assert fast == spyne, (target, spyne, fast)  # the same bytes: declaration, prefixes, empty faultactor
        assert fault(fast)[0] == "Client.NotFound"
    (_, spyne), (_, fast) = edges.both(status_call(gid), "root")  # an admin sees everyone's
    assert fast == spyne and b"<s0:state>succeeded</s0:state>" in fast


@pytest.mark.slow
def test_requests_the_fast_path_does_not_recognise_go_to_spyne(running):
    broker, edges = running
    other_namespace = '<x:getStatusInfoForId xmlns:x="urn:other"><x:globalId>wf-0</x:globalId></x:getStatusInfoForId>'
    extra = ("<c:getStatusInfoForId><c:globalId>wf-0000000000000000zz</c:globalId><c:more/>"
             "</c:getStatusInfoForId>")
    for call in (other_namespace, extra, "<c:getStatusInfoForId/>"):
        (spyne_status, spyne), (fast_status, fast) = edges.both(call)
        assert (fast_status, fast) == (spyne_status, spyne), call
    assert edges.handled == 0


@pytest.mark.slow
def test_a_status_reader_whose_connection_broke_opens_another(running):
    from sqlalchemy.exc import SQLAlchemyError

    broker, _ = running
    wf, _ = broker.run(workflow('<node id="a"><payload type="sh">true</payload></node>'))
    gid = broker.workflow(wf).global_id
    reader = StatusReader(broker.engine.db, broker.engine.progress)
    assert reader.status(gid, None).state == "succeeded"
    kept = reader._local.connection
    kept.connection.dbapi_connection.close()  # the server went away under it
    with pytest.raises(SQLAlchemyError):
        reader.status(gid, None)
    assert reader.status(gid, None).state == "succeeded"
    assert reader._local.connection is not kept


@pytest.mark.slow
def test_the_edge_writes_its_faults_with_the_bytes_spyne_writes_for_the_operations_faults(running):
    from broker.api.faults import FaultSpec, envelope

    broker, edges = running
    call = "<c:getDescriptorAsXml><c:id>999</c:id></c:getDescriptorAsXml>"
    (_, spyne), _ = edges.both(call)
    assert spyne == envelope(FaultSpec("Client.NotFound", "no workflow with id 999"), "urn:workflow-broker:core:v1")
