"""``[api] writes = rows``: an API process without an engine, on its own port, as on another machine.

A real ``broker serve`` (the engine, the writer) and a real ``broker serve`` with ``[api] writes = rows`` on
one PostgreSQL database, each with its own directory (so its own work root: the API process's is never
used), driven with zeep. Every change through the API process is a request row that the engine's applier
applies; the client gets the answers and faults a direct call gives.
"""

from __future__ import annotations

import subprocess
import threading
import warnings

import pytest
import zeep
from sqlalchemy import func, select
from zeep.wsse.username import UsernameToken

from tests.api.helpers import BROKER, Server, add_users, fault_code, waits_for, workflow
from tests.api.test_operable import get
from tests.fixtures import DEADLINE, wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker serve` processes

postgres_only = pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)])

#: the engines read requests this often (s); a short lease, so that a standby takes over quickly
FAST = {"BROKER_ENGINE_CONTROL_INTERVAL": "0.05", "BROKER_ENGINE_LEASE_RENEW": "0.5",
        "BROKER_ENGINE_LEASE_TIMEOUT": "3", "BROKER_ENGINE_STANDBY_POLL": "0.2"}


def rows_server(url: str, tmp, timeout: float = 30.0) -> Server:
    home = tmp / "api"
    home.mkdir(exist_ok=True)
    return Server(url, home, {"BROKER_API_WRITES": "rows", "BROKER_API_REQUEST_TIMEOUT": str(timeout)}).start()


@pytest.fixture
def pair(migrated_url, tmp_path):
    """(the engine's ``broker serve``, the API process without an engine)."""
    add_users(migrated_url)
    (tmp_path / "engine").mkdir()
    engine = Server(migrated_url, tmp_path / "engine", FAST).start()
    api = rows_server(migrated_url, tmp_path)
    try:
        yield engine, api
    finally:
        for server in (api, engine):
            if server.process.poll() is None:
                server.stop(expect=None)
            server.close()


def requests_of(server, kind: str) -> list[tuple[str, str, str | None]]:
    """(state, requested_by, error) of every request of ``kind``, oldest first."""
    from broker.persistence.requestrows import Request

    with server.sessions()() as s:
        return [(r.state, r.requested_by, r.error) for r in s.scalars(
            select(Request).where(Request.kind == kind).order_by(Request.id))]


def one(name: str = "test") -> str:
    """A workflow of one node that succeeds at once."""
    return workflow('<node id="n"><payload type="sh">true</payload></node>', name=name)


def gated(gate, name: str = "gated") -> str:
    return workflow(f'<node id="a">{waits_for(gate)}</node>'
                    '<node id="b"><dependsOn node="a"/><payload type="sh">true</payload></node>', name=name)


def submit_gated(engine, api, gate) -> tuple[object, object]:
    """Alice's gated workflow submitted through the API process: (its handle, its node "a" once running)."""
    handle = api.core("alice").submit({"workflowContent": gated(gate)})
    return handle, wait_for(lambda: (n := engine.node(handle.id, "a")).state == "running" and n,
                            what="the node to run")


@postgres_only
def test_a_workflow_submitted_through_the_api_process_runs_to_its_end(pair):
    engine, api = pair
    assert get(api.base, "/health") == (200, "api")
    handle = api.core("alice").submit({"workflowContent": one(), "workflowId": "first"})
    assert (handle.label, handle.globalId.startswith("wf-")) == ("first", True)
    assert engine.wait_state(handle.id, "succeeded") == "succeeded"
    assert wait_for(lambda: api.core("alice").getStatusInfoForId(handle.globalId).state == "succeeded" or None,
                    what="the API process to read the end")
    assert requests_of(engine, "submit") == [("applied", "user:alice", None)]
    # a repeated label is refused by the API process itself, as by the engine's
    with pytest.raises(zeep.exceptions.Fault) as caught:
        api.core("alice").submit({"workflowContent": one(), "workflowId": "first"})
    assert fault_code(caught) == "Client.InvalidState"


@postgres_only
def test_cancel_restart_and_delete_through_the_api_process(pair, tmp_path):
    engine, api = pair
    gate = tmp_path / "gate"
    handle, _ = submit_gated(engine, api, gate)
    api.core("alice").cancel(handle.globalId)  # answered once committed
    assert engine.workflow_state(handle.id) == "cancelled"
    gate.touch()
    api.core("alice").restart(handle.globalId)
    assert engine.wait_state(handle.id, "succeeded") == "succeeded"
    assert [(state, by) for state, by, _ in requests_of(engine, "cancel") + requests_of(engine, "restart")] == [
        ("applied", "user:alice"), ("applied", "user:alice")]
    workdir = tmp_path / "engine" / "work" / handle.globalId
    assert workdir.is_dir()
    api.admin("root").delete(handle.globalId)
    # the rows are gone when the call returns; the directory goes on the engine's machine right after
    with engine.sessions()() as s:
        from broker.persistence.models import Workflow

        assert s.get(Workflow, handle.id) is None
    wait_for(lambda: not workdir.exists(), what="the engine to remove the work directory")
    assert requests_of(engine, "delete") == [("applied", "admin:root", None)]
    with pytest.raises(zeep.exceptions.Fault) as caught:
        api.admin("root").delete(handle.globalId)
    assert fault_code(caught) == "Client.NotFound"


@postgres_only
def test_a_user_cannot_touch_another_users_workflow_through_the_api_process(pair, tmp_path):
    engine, api = pair
    gate = tmp_path / "gate"
    handle, _ = submit_gated(engine, api, gate)
    for call in (api.core("bob").cancel, api.core("bob").restart, engine.core("bob").cancel):
        with pytest.raises(zeep.exceptions.Fault) as caught:
            call(handle.globalId)
        assert fault_code(caught) == "Client.NotFound"
        assert caught.value.message == f"no workflow {handle.globalId}"
    # a row that names bob is refused by the applier too, whatever process wrote it
    from broker.persistence import requests

    with engine.sessions().begin() as s:
        request_id = requests.insert(s, "cancel", "user:bob", {"workflow_id": handle.id, "node_ids": None})
    row = requests.wait(engine.sessions(), request_id, DEADLINE)
    assert (row.state, row.error_type, row.error) == ("failed", "NotFound", f"no workflow {handle.id}")
    assert engine.workflow_state(handle.id) == "running"
    gate.touch()
    assert engine.wait_state(handle.id, "succeeded") == "succeeded"


@postgres_only
def test_a_refusal_of_the_writer_comes_back_as_the_fault_of_a_direct_call(migrated_url, tmp_path):
    add_users(migrated_url)
    (tmp_path / "engine").mkdir()
    # only the writer counts a user's nodes: the API process cannot refuse this itself
    engine = Server(migrated_url, tmp_path / "engine", {**FAST, "BROKER_LIMITS_MAX_NODES_PER_USER": "1"}).start()
    api = rows_server(migrated_url, tmp_path)
    try:
        two = {"workflowContent": gated(tmp_path / "never")}
        faults = []
        for server in (engine, api):
            with pytest.raises(zeep.exceptions.Fault) as caught:
                server.core("alice").submit(two)
            faults.append((fault_code(caught), caught.value.message))
        assert faults[0] == faults[1]
        assert faults[0][0] == "Client.LimitExceeded" and "max_nodes_per_user" in faults[0][1]
        assert [state for state, _, _ in requests_of(engine, "submit")] == ["failed"]
    finally:
        api.stop()
        engine.stop()
        api.close()
        engine.close()


@postgres_only
def test_an_elfs_push_through_the_api_process_ends_its_node(pair, tmp_path):
    from broker.persistence.elfsessions import create_session

    engine, api = pair
    gate = tmp_path / "gate"
    handle, node = submit_gated(engine, api, gate)
    session_id, secret = create_session(engine.sessions(), node.id, node.attempt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elf = zeep.Client(api.base + "/broker?wsdl", wsse=UsernameToken(str(session_id), secret)).service
    elf.updateNodeStatus(session_id, "PROGRESS 40 on its way", [])
    elf.updateNodeStatus(session_id, "SUCCEEDED 0 pushed", [{"name": "rows", "value": "12"}])
    done = engine.node(handle.id, "a")  # committed when the call returned
    assert (done.state, done.exit_code, done.message, done.outputs) == ("succeeded", 0, "pushed", {"rows": 12})
    elf.updateNodeStatus(session_id, "FAILED 3", [])  # too late: ignored (by the API process), no fault
    assert engine.node(handle.id, "a").state == "succeeded"
    assert [(state, by) for state, by, _ in requests_of(engine, "push")] == [
        ("applied", f"elf:{node.id}/{node.attempt}")] * 2
    with pytest.raises(zeep.exceptions.Fault) as caught:  # checked by the API process: no row
        elf.updateNodeStatus(session_id, "EXPLODED", [])
    assert fault_code(caught) == "Client.InvalidArgument"
    assert len(requests_of(engine, "push")) == 2
    gate.touch()
    assert engine.wait_state(handle.id, "succeeded") == "succeeded"


@postgres_only
def test_a_request_pending_while_the_engine_is_killed_is_applied_once_by_the_next(pair, tmp_path):
    from broker.persistence.models import Workflow

    engine, api = pair
    first = api.core("alice").submit({"workflowContent": one(name="before")})
    assert engine.wait_state(first.id, "succeeded") == "succeeded"
    engine.process.kill()  # kill -9: no drain, its lease stays until it times out
    engine.process.wait(timeout=DEADLINE)
    answers: list[object] = []
    call = threading.Thread(target=lambda: answers.append(api.core("alice").submit(
        {"workflowContent": one(name="after")})))
    call.start()
    wait_for(lambda: [r for r in requests_of(engine, "submit") if r[0] == "pending"], what="the pending request")
    successor = Server(engine.url, engine.tmp, FAST).start()  # same work root; a standby until the lease is free
    try:
        call.join(timeout=DEADLINE)
        assert not call.is_alive() and len(answers) == 1
        handle = answers[0]
        assert successor.wait_state(handle.id, "succeeded") == "succeeded"
        assert [state for state, _, _ in requests_of(engine, "submit")] == ["applied", "applied"]
        with successor.sessions()() as s:
            assert s.scalar(select(func.count()).select_from(Workflow)) == 2
    finally:
        successor.stop()
        successor.close()


@postgres_only
def test_without_an_active_broker_a_call_times_out_with_a_fault_and_its_request_is_withdrawn(migrated_url, tmp_path):
    add_users(migrated_url)
    api = rows_server(migrated_url, tmp_path, timeout=0.5)
    try:
        with pytest.raises(zeep.exceptions.Fault) as caught:
            api.core("alice").submit({"workflowContent": one()})
        assert fault_code(caught) == "Server"
        assert caught.value.message.startswith("no active broker applied the submit within 0.5 s")
        assert [state for state, _, _ in requests_of(api, "submit")] == ["withdrawn"]
        assert get(api.base, "/health") == (200, "api")
    finally:
        api.stop()
        api.close()


def test_rows_on_sqlite_is_refused_in_one_line(tmp_path):
    env = {**Server(f"sqlite:///{tmp_path / 'b.db'}", tmp_path).env, "BROKER_API_WRITES": "rows"}
    done = subprocess.run([str(BROKER), "serve", "--listen", "127.0.0.1:0"], env=env, capture_output=True,
                          text=True, timeout=DEADLINE)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "broker: [api] writes = rows needs PostgreSQL: a SQLite database is served by the one machine whose broker "
        "holds it (API processes beside it: [api] processes = N)"]


@postgres_only
def test_a_broker_run_holding_the_database_refuses_the_api_process_submits(migrated_url, tmp_path):
    from broker.persistence import requests

    add_users(migrated_url)
    gate = tmp_path / "gate"
    (tmp_path / "run").mkdir()
    description = tmp_path / "run" / "held.xml"
    description.write_text(gated(gate, name="held"))
    holder = Server(migrated_url, tmp_path / "run", FAST)
    run = subprocess.Popen([str(BROKER), "run", str(description)], env=holder.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    api = rows_server(migrated_url, tmp_path)
    try:
        def announced() -> bool:
            with api.sessions()() as s:
                return requests.writer_info(s) is not None

        wait_for(announced, what="broker run to hold the database")
        with pytest.raises(zeep.exceptions.Fault) as caught:
            api.core("alice").submit({"workflowContent": one()})
        assert fault_code(caught) == "Client.InvalidState"
        assert "runs only its own account's workflows: API requests need an active broker serve" in \
            caught.value.message
        gate.touch()
        _, err = run.communicate(timeout=DEADLINE)
        assert run.returncode == 0, err
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        api.stop()
        api.close()
