"""The edges (the SOAP API and the admin code) change state through methods of the engine only; the engine
declares what it is made of before it starts."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from broker.engine import Engine
from broker.errors import BrokerError
from tests.engine.helpers import workflow
from tests.fixtures import wait_for

BROKER = Path(__file__).resolve().parents[2] / "broker"
#: what the edges may use of the engine besides its public methods: read sessions, the progress board, the
#: database for Core reads, the work root and the host catalogue (archive targets)
READS = {"sessions", "db", "progress", "workdir", "resources", "start", "stop"}
#: the engine's parts the edges must not reach past it
PARTS = {"writer", "monitoring", "staging", "submission", "pools", "ctx", "store", "relay", "clock", "lock"}


def _engine_uses(path: Path) -> list[tuple[int, str]]:
    """(line, attribute) of every ``<...>.engine.<attribute>`` and ``engine.<attribute>`` in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        owner = node.value
        name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
        if name == "engine":
            found.append((node.lineno, node.attr))
    return found


def test_the_api_and_the_admin_code_reach_the_engine_through_its_methods_only():
    public = {name for name in vars(Engine) if not name.startswith("_")}
    wrong = [f"{path.relative_to(BROKER.parent)}:{line}: engine.{attr}"
             for package in ("api", "admin") for path in sorted((BROKER / package).rglob("*.py"))
             for line, attr in _engine_uses(path) if attr in PARTS or attr not in public | READS]
    assert wrong == []
    assert "ask" not in vars(__import__("broker.api.context", fromlist=["ApiContext"]).ApiContext)


def test_an_engine_declares_its_parts_before_it_starts_and_refuses_requests_until_then(broker):
    engine = Engine(broker.settings)
    assert (engine.writer, engine.ctx, engine.resources, engine.monitoring, engine.pools) == (None, None, None, None, {})
    engine.stop()  # nothing started: nothing to stop
    with pytest.raises(BrokerError, match="not running"):
        engine.cancel(1, "user:alice")


def test_the_push_url_is_an_argument_of_the_engine_given_to_its_workers(migrated_url, tmp_path):
    from tests.engine.helpers import Broker

    made = Broker(migrated_url, tmp_path)
    engine = Engine(made.settings, push_url="http://broker.example:8080/broker").start()
    try:
        assert engine.ctx is not None and engine.ctx.push_url == "http://broker.example:8080/broker"
    finally:
        engine.stop()


def test_cancel_nodes_cancels_one_node_and_skips_its_dependants(broker):
    wf = broker.submit(workflow('''
        <node id="long"><payload type="sh">exec sleep 60</payload></node>
        <node id="after"><dependsOn node="long"/><payload type="sh">true</payload></node>
        <node id="other"><payload type="sh">true</payload></node>'''))
    wait_for(lambda: broker.node_states(wf)["long"] == "running", what="the long node to run")
    node_id = broker.nodes(wf)["long"].id

    accepted = broker.engine.cancel_nodes([node_id], "user:alice")

    assert accepted.workflow_id == wf
    broker.wait(wf)
    assert broker.node_states(wf) == {"long": "cancelled", "after": "skipped", "other": "succeeded"}
