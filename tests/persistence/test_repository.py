"""The repository: users, submission, events and reads, on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select

from broker.description.model import WorkflowSpec, from_json
from broker.errors import ConfigError, DescriptionError, LimitExceeded, NotFound, StateError
from broker.events.types import EventLevel, EventType
from broker.ids import GLOBAL_ID_RE
from broker.persistence import repository as repo
from broker.persistence.models import Dependency, Event, Node, Outbox, Workflow
from tests.persistence.specs import DESCRIPTOR, diamond, flat, node

EVENTS = "/topic/broker.events"


def submit(sessions, spec=None, owner="alice", **options) -> Workflow:
    with sessions.begin() as s:
        user = repo.ensure_user(s, owner)
        return repo.submit_workflow(s, spec or diamond(), descriptor=DESCRIPTOR, owner=user, **options)


def count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def outbox_of(s, event_id: int) -> set[str]:
    return set(s.scalars(select(Outbox.destination).where(Outbox.event_id == event_id)))


# ------------------------------------------------------------------------------------------------ users

@pytest.mark.parametrize("name", ["Alice", "1abc", "a" * 33, "bob/x", "", "bob*", "bob.smith", "al ice"])
def test_user_names_outside_the_allowed_pattern_are_refused(session, name):
    with pytest.raises(ConfigError, match="invalid user name"):
        repo.ensure_user(session, name)


def test_ensure_user_creates_once_and_keeps_the_existing_role(sessions):
    with sessions.begin() as s:
        first = repo.ensure_user(s, "carol_2-x", role="admin")
    with sessions.begin() as s:
        again = repo.ensure_user(s, "carol_2-x")
        assert again.id == first.id and again.role == "admin"
    with sessions() as s:
        assert repo.get_user(s, "carol_2-x").id == first.id


def test_an_unknown_role_is_refused(session):
    with pytest.raises(ConfigError, match="role"):
        repo.ensure_user(session, "dave", role="root")


def test_get_user_of_a_missing_name_raises_not_found(session):
    with pytest.raises(NotFound, match="nobody"):
        repo.get_user(session, "nobody")


# ------------------------------------------------------------------------------------------- submission

def test_submission_stores_the_descriptor_verbatim_with_its_sha256_and_the_plan(sessions):
    wf = submit(sessions)
    with sessions() as s:
        stored = repo.get_workflow(s, wf.global_id)
        assert stored.descriptor == DESCRIPTOR
        assert stored.descriptor_sha256 == hashlib.sha256(DESCRIPTOR.encode("utf-8")).hexdigest()
        assert from_json(stored.plan) == diamond()
        assert GLOBAL_ID_RE.fullmatch(stored.global_id)
        assert (stored.state, stored.name, stored.event_seq) == ("accepted", "diamond", 1)
        assert stored.event_level == EventLevel.STATUS
        assert stored.submitted_at.utcoffset() is not None


@pytest.mark.slow
def test_top_level_nodes_start_waiting_for_the_engine_to_decide_them(sessions):
    wf = submit(sessions)
    with sessions() as s:
        nodes = {n.path: n for n in repo.list_nodes(s, wf.id)}
    # the sweep is stored as one node: members are expanded later, by the engine
    assert list(nodes) == ["a", "b", "s", "d"]
    assert {p: (n.kind, n.state) for p, n in nodes.items()} == {
        "a": ("node", "waiting"), "b": ("node", "waiting"), "s": ("sweep", "waiting"), "d": ("node", "waiting")}
    assert all(n.template == n.path and n.parent_id is None and n.attempt == 0 for n in nodes.values())
    assert nodes["b"].priority == 5


def test_submission_stores_one_dependency_row_per_edge(sessions):
    wf = submit(sessions)
    with sessions() as s:
        paths = {n.id: n.path for n in repo.list_nodes(s, wf.id)}
        edges = {(paths[d.parent_id], paths[d.child_id]) for d in s.scalars(select(Dependency))}
    assert edges == {("a", "b"), ("a", "s"), ("b", "d"), ("s", "d")}


def test_submission_records_workflow_submitted_as_event_1_with_its_outbox_rows(sessions):
    wf = submit(sessions, publish_metadata_to="/queue/lab.metadata")
    with sessions() as s:
        (event,) = s.scalars(select(Event).where(Event.workflow_id == wf.id))
        assert (event.seq, event.type, event.level, event.actor) == (
            1, EventType.WORKFLOW_SUBMITTED, EventLevel.INFO, "submission")
        assert event.properties["nodes"] == 4
        assert outbox_of(s, event.id) == {EVENTS, "/topic/broker.user.alice", "/queue/lab.metadata"}


def test_a_workflow_at_error_level_keeps_the_event_and_sends_only_metadata(sessions):
    wf = submit(sessions, event_level="ERROR", publish_metadata_to="/queue/meta")
    with sessions() as s:
        (event,) = s.scalars(select(Event).where(Event.workflow_id == wf.id))
        assert outbox_of(s, event.id) == {"/queue/meta"}
    wf2 = submit(sessions, spec=diamond(), owner="bob", event_level=EventLevel.ERROR)
    with sessions() as s:
        (event,) = s.scalars(select(Event).where(Event.workflow_id == wf2.id))
        assert outbox_of(s, event.id) == set()


def test_overrides_replace_the_descriptions_values(sessions):
    spec = diamond(priority=1, max_in_flight=3, publish_metadata_to="/queue/spec", event_level="DEBUG")
    plain = submit(sessions, spec=spec)
    forced = submit(sessions, spec=spec, owner="bob", event_level="INFO", priority=9, max_in_flight=7,
                    publish_metadata_to="/queue/override", experiment_id="exp-1")
    assert (plain.priority, plain.max_in_flight, plain.publish_metadata_to, plain.event_level) == (
        1, 3, "/queue/spec", EventLevel.DEBUG)
    assert (forced.priority, forced.max_in_flight, forced.publish_metadata_to, forced.event_level,
            forced.experiment_id) == (9, 7, "/queue/override", EventLevel.INFO, "exp-1")


def test_an_unknown_event_level_is_refused(sessions):
    with pytest.raises(ConfigError, match="event level"):
        submit(sessions, event_level="LOUD")


def test_resubmitting_a_request_id_returns_the_same_workflow(sessions):
    first = submit(sessions, request_id="req-1", label="run-1")
    again = submit(sessions, request_id="req-1", label="run-1")
    assert again.id == first.id and again.global_id == first.global_id
    assert count(sessions, Workflow) == 1 and count(sessions, Event) == 1 and count(sessions, Node) == 4


def test_the_same_request_id_from_another_owner_is_a_new_workflow(sessions):
    first = submit(sessions, request_id="req-1")
    other = submit(sessions, request_id="req-1", owner="bob")
    assert other.id != first.id


def test_a_label_is_unique_per_owner(sessions):
    first = submit(sessions, label="nightly")
    with pytest.raises(StateError, match=f"label 'nightly' is already used by workflow {first.global_id}"):
        submit(sessions, label="nightly")
    assert submit(sessions, label="nightly", owner="bob").label == "nightly"
    assert count(sessions, Workflow) == 2


@pytest.mark.parametrize("field", ["label", "request_id", "experiment_id", "publish_metadata_to"])
def test_a_value_longer_than_its_column_is_refused_before_anything_is_written(sessions, field):
    with pytest.raises(LimitExceeded, match=field.replace("_", " ")):
        submit(sessions, **{field: "x" * 257})
    assert count(sessions, Workflow) == 0


def test_a_dependency_on_a_missing_node_is_refused_before_anything_is_written(sessions):
    spec = WorkflowSpec(name="broken", nodes=(node("a"), node("b", "ghost")))
    with pytest.raises(DescriptionError, match="ghost"):
        submit(sessions, spec=spec)
    assert count(sessions, Workflow) == 0


def test_a_repeated_node_id_is_refused(sessions):
    spec = WorkflowSpec(name="twice", nodes=(node("a"), node("a")))
    with pytest.raises(DescriptionError, match="used twice"):
        submit(sessions, spec=spec)


def test_a_refused_submission_leaves_the_callers_transaction_usable(sessions):
    with sessions.begin() as s:
        user = repo.ensure_user(s, "alice")
        repo.submit_workflow(s, diamond(), descriptor=DESCRIPTOR, owner=user, label="x")
        with pytest.raises(StateError):
            repo.submit_workflow(s, diamond(), descriptor=DESCRIPTOR, owner=user, label="x")
        repo.submit_workflow(s, diamond(), descriptor=DESCRIPTOR, owner=user, label="y")
    assert count(sessions, Workflow) == 2


# ------------------------------------------------------------------------------------------------ reads

@pytest.mark.slow
def test_get_workflow_by_global_id_database_id_or_digits(sessions):
    wf = submit(sessions)
    with sessions() as s:
        assert repo.get_workflow(s, wf.global_id).id == wf.id
        assert repo.get_workflow(s, wf.id).global_id == wf.global_id
        assert repo.get_workflow(s, str(wf.id)).id == wf.id
        for missing in ("wf-0000000000zzzzzzzz", wf.id + 1, "nonsense"):
            with pytest.raises(NotFound):
                repo.get_workflow(s, missing)


# ----------------------------------------------------------------------------------------------- events

def test_add_event_numbers_events_per_workflow_and_promotes_failures_to_error(sessions):
    wf = submit(sessions)
    with sessions.begin() as s:
        row = repo.get_workflow(s, wf.id)
        repo.add_event(s, row, type=EventType.NODE_STATE, node_path="a", state="running", actor="monitoring")
        failed = repo.add_event(s, row, type="NODE_STATE", node_path="a", state="failed", actor="monitoring",
                                message="exit code 3", properties={"previous": "running", "exit_code": 3})
    with sessions() as s:
        events = s.scalars(select(Event).where(Event.workflow_id == wf.id).order_by(Event.id)).all()
        assert [(e.seq, e.type, e.level) for e in events] == [
            (1, "WORKFLOW_SUBMITTED", EventLevel.INFO), (2, "NODE_STATE", EventLevel.STATUS),
            (3, "NODE_STATE", EventLevel.ERROR)]
        assert events[2].id == failed and events[2].properties == {"previous": "running", "exit_code": 3}
        assert repo.get_workflow(s, wf.id).event_seq == 3
        # NODE_STATE is not a metadata event: only the general and the owner's topics
        assert outbox_of(s, failed) == {EVENTS, "/topic/broker.user.alice"}


def test_a_service_event_has_no_workflow_and_goes_to_the_events_topic(sessions):
    with sessions.begin() as s:
        event_id = repo.add_event(s, None, type=EventType.SERVICE, actor="broker", message="started")
    with sessions() as s:
        event = s.get(Event, event_id)
        assert (event.workflow_id, event.seq) == (None, None)
        assert outbox_of(s, event_id) == {EVENTS}


@pytest.mark.slow
def test_events_after_pages_by_last_id_and_filters_by_workflow_and_owner(sessions):
    alice_wf = submit(sessions)
    bob_wf = submit(sessions, owner="bob")
    with sessions.begin() as s:
        for wf in (alice_wf, bob_wf, alice_wf, bob_wf, alice_wf):
            repo.add_event(s, repo.get_workflow(s, wf.id), type=EventType.NODE_PROGRESS, node_path="a",
                           actor="elf", properties={"percent": 50})

    def pages(**filters) -> list[list[int]]:
        out, last = [], 0
        with sessions() as s:
            while page := [e.id for e in repo.events_after(s, last, limit=2, **filters)]:
                out.append(page)
                last = page[-1]
        return out

    everything = pages()
    ids = [i for page in everything for i in page]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 7
    assert all(len(page) <= 2 for page in everything)
    with sessions() as s:
        alice_ids = {e.id for e in s.scalars(select(Event).where(Event.workflow_id == alice_wf.id))}
    assert [i for page in pages(workflow_id=alice_wf.id) for i in page] == sorted(alice_ids)
    assert [i for page in pages(owner_id=alice_wf.owner_id) for i in page] == sorted(alice_ids)
    with sessions() as s:
        assert repo.events_after(s, ids[-1], limit=10) == []
        with pytest.raises(ValueError):
            repo.events_after(s, 0, limit=0)


# ---------------------------------------------------------------------------------------------- volume

@pytest.mark.slow
def test_a_workflow_of_100000_nodes_is_stored_whole(sessions):
    # how fast is measured by tests/perf/bench_description.py, not here
    spec = flat(100_000)
    with sessions.begin() as s:
        user = repo.ensure_user(s, "alice")
    with sessions.begin() as s:
        wf = repo.submit_workflow(s, spec, descriptor=DESCRIPTOR, owner=user)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Node).where(Node.workflow_id == wf.id)) == 100_000
        assert s.scalar(select(func.count()).select_from(Dependency)) == 99_999
        states = dict(s.execute(select(Node.state, func.count()).where(Node.workflow_id == wf.id)
                                .group_by(Node.state)).all())
    assert states == {"waiting": 100_000}
