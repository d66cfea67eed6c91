"""``broker admin delete``: each form removes exactly its targets (rows and work directories), on SQLite and
PostgreSQL; running workflows are never touched; it lists, asks, and goes through a running broker."""

from __future__ import annotations

import time

import pytest

from broker.admin.delete import Selection
from tests.admin.helpers import ACTOR, admin_events, example, gated, orphan_attempts, run_workflows, workflow_rows
from tests.engine.helpers import Broker
from tests.fixtures import wait_for

pytestmark = pytest.mark.slow  # every test here runs `broker` commands as processes


@pytest.fixture
def population(admin_cli, tmp_path):
    """alice: two finished, one running; bob: one finished, finished later than the others."""
    gate = tmp_path / "gate"
    first = run_workflows(admin_cli.url, admin_cli.tmp, {"a-ok": (example("hello.xml"), "alice"),
                                                         "a-failed": (example("failing.xml"), "alice")},
                          running={"a-running": (gated(gate), "alice")})
    # bob's workflow finishes strictly after the cut-off
    cutoff = time.time() * 1000
    wait_for(lambda: time.time() * 1000 > cutoff + 5, what="the clock to pass the cut-off", interval=0.005)
    second = run_workflows(admin_cli.url, admin_cli.tmp, {"b-ok": (example("hello.xml"), "bob")})
    made = {**first.gids, **second.gids}
    yield made, int(cutoff)
    gate.touch()


def _delete(cli, *args):
    return cli("admin", "delete", *args, "--yes")


def _gone(cli, before, expected_gone):
    after = workflow_rows(cli.sessions)
    assert set(before) - set(after) == set(expected_gone)
    assert all(before[gid][3] for gid in expected_gone), "each deleted workflow had attempts"
    assert orphan_attempts(cli.sessions) == 0, "a deleted workflow's attempts go with it"
    for gid in after:
        assert after[gid] == before[gid], f"{gid} was touched"
    for gid in before:
        assert (cli.workdir / gid).exists() == (gid not in expected_gone), gid


def test_delete_completed_removes_every_finished_workflow_and_skips_the_running_one(admin_cli, population):
    made, _ = population
    before = workflow_rows(admin_cli.sessions)
    done = _delete(admin_cli, "--completed")
    assert done.returncode == 0, done.stderr
    _gone(admin_cli, before, {made["a-ok"], made["a-failed"], made["b-ok"]})
    event = admin_events(admin_cli.sessions)[-1]
    assert event.workflow_id is None and event.actor == ACTOR and event.properties["deleted"] == 3
    assert set(event.properties["deleted_ids"]) == {made["a-ok"], made["a-failed"], made["b-ok"]}


def test_delete_before_compares_the_finish_time(admin_cli, population):
    made, cutoff = population
    before = workflow_rows(admin_cli.sessions)
    done = _delete(admin_cli, "--before", str(cutoff))
    assert done.returncode == 0, done.stderr
    _gone(admin_cli, before, {made["a-ok"], made["a-failed"]})


def test_delete_by_id_removes_that_workflow_only_and_refuses_a_running_one(admin_cli, population):
    made, _ = population
    before = workflow_rows(admin_cli.sessions)
    done = _delete(admin_cli, "--id", made["a-failed"])
    assert done.returncode == 0, done.stderr
    _gone(admin_cli, before, {made["a-failed"]})
    refused = _delete(admin_cli, "--id", made["a-running"])
    assert refused.returncode == 3 and f"workflow {made['a-running']} is still running" in refused.stderr
    assert made["a-running"] in workflow_rows(admin_cli.sessions)
    unknown = _delete(admin_cli, "--id", "wf-0000000000000000zz")
    assert unknown.returncode == 2 and "no workflow" in unknown.stderr


def test_delete_for_a_user_removes_that_user_s_finished_workflows(admin_cli, population):
    made, _ = population
    before = workflow_rows(admin_cli.sessions)
    done = _delete(admin_cli, "--user", "alice")
    assert done.returncode == 0, done.stderr
    assert f"skipped: workflow {made['a-running']} is still running" in done.stdout
    _gone(admin_cli, before, {made["a-ok"], made["a-failed"]})
    assert _delete(admin_cli, "--user", "nobody").returncode == 2


def test_it_lists_and_asks_first_and_a_dry_run_only_lists(sqlite_admin_cli):
    cli = sqlite_admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice")})
    before = workflow_rows(cli.sessions)
    dry = cli("admin", "delete", "--completed", "--dry-run")
    assert dry.returncode == 0 and made.gids["hello"] in dry.stdout and "will delete 1 workflow" in dry.stdout
    declined = cli("admin", "delete", "--completed", stdin="n\n")
    assert declined.returncode == 1 and "[y/N]" in declined.stdout and "nothing deleted" in declined.stdout
    assert workflow_rows(cli.sessions) == before and not admin_events(cli.sessions)
    accepted = cli("admin", "delete", "--completed", stdin="y\n")
    assert accepted.returncode == 0 and workflow_rows(cli.sessions) == {}


def test_changing_commands_go_through_a_running_broker_with_the_same_output(admin_cli):
    cli = admin_cli
    made = run_workflows(cli.url, cli.tmp, {"hello": (example("hello.xml"), "alice"),
                                            "other": (example("hello.xml"), "alice")})
    broker = Broker(cli.url, cli.tmp).start()
    try:
        # reading works alongside the broker
        assert cli("admin", "delete", "--completed", "--dry-run").returncode == 0
        state = cli("admin", "state")
        assert state.returncode == 0 and "broker: running" in state.stdout
        done = cli("admin", "delete", "--id", made.gids["hello"], "--yes")
        assert done.returncode == 0, done.stderr
        assert f"deleted 1 workflow: {made.gids['hello']}" in done.stdout
        assert set(workflow_rows(cli.sessions)) == {made.gids["other"]}
        # the running broker's writer recorded it, as admin:<operator>
        (event,) = admin_events(cli.sessions)
        assert event.actor == ACTOR and made.gids["hello"] in event.message
        archived = cli.archive(delete_after=True)
        assert archived.returncode == 0, archived.stderr
        assert "archived 1 workflow to" in archived.stdout and "deleted 1" in archived.stdout
        assert workflow_rows(cli.sessions) == {}
        assert (cli.archives / f"{made.gids['other']}.xml").exists()
    finally:
        broker.stop()


def test_remote_work_directories_are_removed_as_the_owner_and_retried_when_a_host_is_down(admin_cli, tmp_path):
    """The Deleter's logic with a stand-in for the hosts (the real SSH host: tests/engine/test_remote.py)."""
    from sqlalchemy import update

    from broker.admin.delete import Deleter, journal_for
    from broker.admin.audit import OwnWriter
    from broker.errors import ResourceError
    from broker.persistence.models import Node

    made = run_workflows(admin_cli.url, admin_cli.tmp, {"remote": (example("hello.xml"), "alice"),
                                                        "gone-host": (example("hello.xml"), "alice")})
    with admin_cli.sessions.begin() as s:  # as if their attempts had run on remote hosts
        s.execute(update(Node).where(Node.workflow_id == made.ids["remote"]).values(host="al@lab"))
        s.execute(update(Node).where(Node.workflow_id == made.ids["gone-host"]).values(host="al@old"))
    calls, down = [], {"lab"}

    def remove(host, owner, gid):
        calls.append((host, owner, gid))
        if host == "old":
            raise ResourceError("host 'old' is not in the host catalogue", retryable=False)
        if host in down:
            raise ResourceError("lab: connection refused")

    journal = journal_for(tmp_path, admin_cli.url)
    writer = OwnWriter(admin_cli.sessions, limits=None, publishing=True)
    deleter = Deleter(admin_cli.sessions, writer, ACTOR, workdir_root=admin_cli.workdir, journal=journal,
                      require_drained=False, remove_remote=remove)
    plan = deleter.plan(Selection(workflow_ids=(made.ids["remote"], made.ids["gone-host"])))
    assert len(deleter.delete(plan.deletable, "delete").deleted) == 2
    remote, old = made.gids["remote"], made.gids["gone-host"]
    assert sorted(calls) == [("lab", "alice", remote), ("old", "alice", old)]
    # the host that was down stays in the journal; the one no longer in the catalogue does not
    assert journal.entries() == {remote: [["lab", "alice"]]}
    down.clear()
    assert deleter.recover() == [remote]
    assert calls[-1] == ("lab", "alice", remote) and journal.entries() == {}
