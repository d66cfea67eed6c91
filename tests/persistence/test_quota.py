"""Node limits in the writer (issue 12, section 1): a user's unfinished workflows ([limits] max_nodes_per_user) at
submission, and every expansion against the workflow's and the user's stored nodes, before anything is written,
counting what other expansions of the same commit add."""

from __future__ import annotations

from sqlalchemy import func, select

from broker.config import LimitSettings
from broker.description.expansion import expand
from broker.description.model import Param, SweepSpec, WorkflowSpec
from broker.errors import LimitExceeded
from broker.persistence import repository as repo
from broker.persistence.changes import Accepted, CancelWorkflow, Expansion, MemberRows, Rejected, Submit
from broker.persistence.models import Event, Node
from broker.persistence.store import Store
from broker.states import NodeState
from broker.workers.expand import body_rows
from tests.persistence.specs import DESCRIPTOR, flat, node


def submit(store: Store, spec: WorkflowSpec, owner: str = "alice", request_id: str | None = None):
    """The writer's answer to one Submit: Accepted or Rejected."""
    out = store.commit([Submit(spec=spec, descriptor=DESCRIPTOR, owner=owner, request_id=request_id,
                               reply_to="caller")])
    [(to, answer)] = out.replies
    assert to == "caller"
    return answer


def test_a_submission_that_would_pass_the_users_limit_is_refused_as_a_limit(sessions):
    store = Store(sessions, limits=LimitSettings(max_nodes_per_user=5))
    assert isinstance(submit(store, flat(3)), Accepted)
    refused = submit(store, flat(3))
    assert isinstance(refused, Rejected) and isinstance(refused.error, LimitExceeded)
    assert refused.reason == ("a workflow of 3 nodes would bring the unfinished workflows of user alice to 6 nodes, "
                              "limit 5 ([limits] max_nodes_per_user)")
    assert isinstance(submit(store, flat(3), owner="bob"), Accepted)  # a limit per user
    assert isinstance(submit(store, flat(2)), Accepted)  # 5: at the limit is fine


def test_only_unfinished_workflows_count_and_a_repeated_request_is_not_refused(sessions):
    store = Store(sessions, limits=LimitSettings(max_nodes_per_user=5))
    first = submit(store, flat(4), request_id="r1")
    assert isinstance(submit(store, flat(4), request_id="r1"), Accepted)  # the same request: its handle again
    assert isinstance(submit(store, flat(2)), Rejected)
    store.commit([CancelWorkflow(first.workflow_id, "user:alice")])
    assert isinstance(submit(store, flat(2)), Accepted)


def test_unfinished_workflows_this_broker_does_not_track_count_too(sessions):
    # `broker run` tracks only its own workflow: another one of the same user, left unfinished, still counts
    with sessions.begin() as s:
        repo.submit_workflow(s, flat(4), descriptor=DESCRIPTOR, owner=repo.ensure_user(s, "alice"))
    store = Store(sessions, limits=LimitSettings(max_nodes_per_user=5))
    refused = submit(store, flat(2))
    assert isinstance(refused, Rejected) and "to 6 nodes" in refused.reason
    assert isinstance(submit(store, flat(1)), Accepted)


def test_no_limit_when_it_is_0(sessions):
    store = Store(sessions, limits=LimitSettings(max_nodes_per_user=0))
    assert isinstance(submit(store, flat(50)), Accepted)


def _two_sweeps() -> WorkflowSpec:
    body = (node("prep"), node("run", "prep"))
    values = tuple(str(i) for i in range(10))
    return WorkflowSpec(name="sweeps", nodes=tuple(
        SweepSpec(id=name, params=(Param(name="x", source="list", values=values),), body=body) for name in "st"))


def _expansion(sessions, workflow_id: int, path: str, sweep: SweepSpec,
               values: tuple[str, ...] | None = None) -> Expansion:
    """What the expand worker sends the writer for ``sweep``."""
    with sessions() as s:
        node_id = s.execute(select(Node.id).where(Node.workflow_id == workflow_id, Node.path == path)).scalar_one()
    members = expand(sweep, {"x": values or sweep.params[0].values}, max_members=1000)
    rows = []
    for m in members:
        nodes, edges = body_rows(sweep, path, m.path)
        rows.append(MemberRows(index=m.index, path=m.path, bindings=m.bindings, nodes=nodes, edges=edges))
    return Expansion(node_id=node_id, actor="submission", members=tuple(rows))


def _stored(sessions, workflow_id: int) -> dict[str, int]:
    with sessions() as s:
        return dict(s.execute(select(Node.kind, func.count()).where(Node.workflow_id == workflow_id)
                              .group_by(Node.kind)).all())


def _state(sessions, workflow_id: int, path: str) -> str:
    with sessions() as s:
        return s.execute(select(Node.state).where(Node.workflow_id == workflow_id, Node.path == path)).scalar_one()


def _messages(sessions, workflow_id: int, path: str) -> list[str]:
    with sessions() as s:
        return list(s.scalars(select(Event.message).where(Event.workflow_id == workflow_id, Event.node_path == path)
                              .order_by(Event.id)))


def test_two_expansions_in_one_commit_see_each_others_nodes(sessions):
    # 2 sweeps + 10 members x 2 body nodes each: the first fits in 30 nodes, the second would make 42
    spec = _two_sweeps()
    store = Store(sessions, limits=LimitSettings(max_nodes=30))
    accepted = submit(store, spec)
    first, second = (_expansion(sessions, accepted.workflow_id, name, sweep) for name, sweep in zip("st", spec.nodes))
    store.commit([first, second])
    assert _stored(sessions, accepted.workflow_id) == {"sweep": 2, "member": 10, "node": 20}
    assert _state(sessions, accepted.workflow_id, "t") == NodeState.FAILED.value
    assert _messages(sessions, accepted.workflow_id, "t")[-1] == (
        "parameterized node 't': expanding 10 members would make 42 nodes, limit 30 ([limits] max_nodes)")


def test_an_expansion_over_the_users_limit_fails_its_sweep_and_writes_nothing(sessions):
    # values from an output count one member statically (3 nodes): the real 10 are known at expansion only
    sweep = SweepSpec(id="s", params=(Param(name="x", source="output", from_node="src", from_property="v"),),
                      body=(node("prep"), node("run", "prep")))
    store = Store(sessions, limits=LimitSettings(max_nodes_per_user=20))
    assert isinstance(submit(store, flat(3)), Accepted)  # alice's other unfinished workflow: 3 nodes
    accepted = submit(store, WorkflowSpec(name="out", nodes=(sweep,)))
    assert isinstance(accepted, Accepted)
    values = tuple(str(i) for i in range(10))
    store.commit([_expansion(sessions, accepted.workflow_id, "s", sweep, values)])
    assert _stored(sessions, accepted.workflow_id) == {"sweep": 1}
    assert _state(sessions, accepted.workflow_id, "s") == NodeState.FAILED.value
    assert _messages(sessions, accepted.workflow_id, "s")[-1] == (
        "parameterized node 's': expanding 10 members would bring the unfinished workflows of user alice to "
        "24 nodes, limit 20 ([limits] max_nodes_per_user)")
