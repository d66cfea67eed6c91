"""Dynamic spawn on a real engine: ``@broker spawn FILE`` adds a checked fragment's nodes under the node, which
runs on as their group; invalid or unreadable fragments fail it; a restart of the node spawns afresh."""

from __future__ import annotations

from pathlib import Path

from broker.states import WorkflowState
from tests.engine.helpers import lines, marker, workflow

NS = 'xmlns="urn:workflow-broker:workflow:1.0"'


def fragment(tmp: Path, body: str, name: str = "more.xml") -> Path:
    """A fragment document holding ``body``, written where a payload copies it from."""
    path = tmp / name
    path.write_text(f'<workflow {NS} name="more">\n{body}\n</workflow>\n', encoding="utf-8")
    return path


def spawner(source: str, name: str = "more.xml", before: str = "") -> str:
    """A payload that copies ``source`` (a shell word: may use $WB_ATTEMPT) into its work directory as
    ``name`` and spawns it."""
    return (f'<payload type="sh">{before}cp "{source}" "$WB_WORKDIR/{name}"; '
            f'echo "@broker spawn {name}"</payload>')


def test_spawned_nodes_run_under_the_node_and_its_dependants_wait_for_all_of_them(broker, tmp_path):
    source = fragment(tmp_path, f"""
      <node id="a"><payload type="sh">{marker(tmp_path, "a")}</payload></node>
      <sweep id="s"><dependsOn node="a"/><param name="k"><value>1</value><value>2</value></param>
        <body><node id="run"><payload type="sh">{marker(tmp_path, "run")}</payload></node></body></sweep>
      <node id="b"><dependsOn node="s"/><payload type="sh">sleep 0.2; {marker(tmp_path, "b")}</payload></node>""")
    wf, state = broker.run(workflow(f"""
      <node id="plan">{spawner(str(source))}</node>
      <node id="after"><dependsOn node="plan"/><payload type="sh">{marker(tmp_path, "after")}</payload></node>"""))
    assert state is WorkflowState.SUCCEEDED
    nodes = broker.nodes(wf)
    spawned = {p for p in nodes if p.startswith("plan/")}
    assert spawned == {"plan/a", "plan/s", "plan/s[0]", "plan/s[1]", "plan/s[0]/run", "plan/s[1]/run", "plan/b"}
    plan = nodes["plan"]
    assert (plan.state, plan.members, plan.exit_code, plan.attempt) == ("succeeded", 3, 0, 1)
    from broker.persistence.attempts import attempts_of

    with broker.sessions() as s:  # its one attempt is recorded as any attempt that succeeded
        assert [(a.number, a.outcome, a.exit_code) for a in attempts_of(s, plan.id)] == [(1, "succeeded", 0)]
    assert all(nodes[p].parent_id == plan.id for p in ("plan/a", "plan/s", "plan/b"))
    # the dependant waited for every spawned node, as for a sweep's members
    assert nodes["after"].started_at >= max(nodes[p].finished_at for p in spawned)
    assert lines(tmp_path, "a") == ["plan/a 1"] and len(lines(tmp_path, "run")) == 2
    events = [e for e in broker.events(wf) if e.type == "NODE_SPAWNED"]
    assert [(e.node_path, e.message, e.properties) for e in events] == [
        ("plan", "spawned 3 nodes from more.xml", {"nodes": 3, "file": "more.xml", "attempt": 1})]


def test_for_a_tolerance_each_spawned_node_counts_as_one_unit(broker, tmp_path):
    source = fragment(tmp_path, "".join(f'<node id="n{i}"><payload type="sh">exit {int(i == 0)}</payload></node>'
                                        for i in range(4)))
    wf, state = broker.run(workflow(f"""
      <failureConstraint maxFailed="10"/>
      <node id="plan">{spawner(str(source))}</node>
      <node id="lenient"><dependsOn node="plan"/><requires tolerance="0.75"/><payload type="sh">true</payload></node>
      <node id="strict"><dependsOn node="plan"/><requires tolerance="0.8"/><payload type="sh">true</payload></node>"""))
    states = broker.node_states(wf)
    # 3 of the 4 spawned nodes succeeded: 75 %
    assert (states["plan"], states["lenient"], states["strict"]) == ("failed", "succeeded", "skipped")


def test_an_invalid_fragment_fails_the_node_with_the_problems_at_their_lines(broker, tmp_path):
    source = fragment(tmp_path, """<node id="a"><dependsOn node="elsewhere"/><payload type="sh">true</payload></node>
<node id="b"><bogus/></node>""")
    wf, state = broker.run(workflow(f"""
      <node id="plan">{spawner(str(source))}</node>
      <node id="after"><dependsOn node="plan"/><payload type="sh">true</payload></node>"""))
    assert state is WorkflowState.FAILED
    nodes = broker.nodes(wf)
    assert set(nodes) == {"plan", "after"} and nodes["after"].state == "skipped"
    message = nodes["plan"].message
    assert message.startswith("the spawned fragment more.xml was refused: more.xml:3:")
    assert "bogus" in message and nodes["plan"].state == "failed" and nodes["plan"].exit_code == 0
    semantic = fragment(tmp_path, '<node id="a"><dependsOn node="elsewhere"/><payload type="sh">true</payload></node>',
                        "dangling.xml")
    wf, state = broker.run(workflow(f'<node id="plan">{spawner(str(semantic))}</node>'))
    assert state is WorkflowState.FAILED
    assert broker.nodes(wf)["plan"].message.startswith("the spawned fragment more.xml was refused: more.xml:2:")
    assert "elsewhere" in broker.nodes(wf)["plan"].message


def test_a_fragment_outside_the_work_directory_through_a_symlink_or_too_big_is_refused(broker, tmp_path):
    source = fragment(tmp_path, '<node id="a"><payload type="sh">true</payload></node>')
    big = tmp_path / "big.xml"
    big.write_bytes(b" " * (1024 * 1024 + 1))
    cases = {
        "up": f'<payload type="sh">echo "@broker spawn ../more.xml"</payload>',
        "absolute": f'<payload type="sh">echo "@broker spawn {source}"</payload>',
        "link": f'<payload type="sh">ln -s "{source}" "$WB_WORKDIR/l.xml"; echo "@broker spawn l.xml"</payload>',
        "linked-dir": f'<payload type="sh">ln -s "{tmp_path}" "$WB_WORKDIR/d"; echo "@broker spawn d/more.xml"</payload>',
        "big": spawner(str(big)),
        "missing": '<payload type="sh">echo "@broker spawn nothing.xml"</payload>',
    }
    wf, state = broker.run(workflow("".join(f'<node id="{name}">{payload}</node>' for name, payload in cases.items())))
    nodes = broker.nodes(wf)
    assert {p: n.state for p, n in nodes.items()} == dict.fromkeys(cases, "failed")
    why = {p: n.message.removeprefix(f"the spawned fragment ").split(" could not be read: ", 1)[1]
           for p, n in nodes.items()}
    assert why == {
        "up": "the file name must not have empty, '.' or '..' segments",
        "absolute": "the file name must be relative to the work directory",
        "link": "it is a symlink (not followed)",
        "linked-dir": "d: not a directory inside the work directory (a symlink is not followed)",
        "big": "it is larger than 1048576 bytes",
        "missing": "cannot open it: No such file or directory",
    }


def test_restarting_the_spawning_node_discards_what_it_spawned_and_spawns_afresh(broker, tmp_path):
    fragment(tmp_path, '<node id="first"><payload type="sh">exit 1</payload></node>', "more.xml.1")
    fragment(tmp_path, f'<node id="second"><payload type="sh">{marker(tmp_path, "second")}</payload></node>',
             "more.xml.2")
    wf, state = broker.run(workflow(f"""
      <node id="plan">{spawner(f"{tmp_path}/more.xml.$WB_ATTEMPT", before=marker(tmp_path, "plan") + "; ")}</node>
      <node id="after"><dependsOn node="plan"/><payload type="sh">true</payload></node>"""))
    assert state is WorkflowState.FAILED
    assert broker.node_states(wf) == {"plan": "failed", "plan/first": "failed", "after": "skipped"}
    plan = broker.nodes(wf)["plan"]
    broker.engine.restart(wf, "user:alice", (plan.id,))
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    nodes = broker.nodes(wf)
    assert {p: n.state for p, n in nodes.items()} == {"plan": "succeeded", "plan/second": "succeeded",
                                                       "after": "succeeded"}
    assert (nodes["plan"].attempt, nodes["plan"].members) == (2, 1)
    assert lines(tmp_path, "plan") == ["plan 1", "plan 2"] and lines(tmp_path, "second") == ["plan/second 1"]
    assert [e.properties["attempt"] for e in broker.events(wf) if e.type == "NODE_SPAWNED"] == [1, 2]


def test_a_spawned_node_may_spawn_again_up_to_the_spawn_depth(make_broker, tmp_path):
    broker = make_broker()
    broker.settings = broker.settings.replace("limits", max_spawn_depth=2)
    broker.start()
    inner = fragment(tmp_path, '<node id="leaf"><payload type="sh">true</payload></node>', "inner.xml")
    middle = fragment(tmp_path, f'<node id="mid">{spawner(str(inner))}</node>', "middle.xml")
    wf, state = broker.run(workflow(f'<node id="top">{spawner(str(middle))}</node>'))
    assert state is WorkflowState.SUCCEEDED
    assert set(broker.nodes(wf)) == {"top", "top/mid", "top/mid/leaf"}
    deeper = fragment(tmp_path, f'<node id="again">{spawner(str(inner))}</node>', "deeper.xml")
    third = fragment(tmp_path, f'<node id="mid">{spawner(str(deeper))}</node>', "third.xml")
    wf, state = broker.run(workflow(f'<node id="top">{spawner(str(third))}</node>'))
    assert state is WorkflowState.FAILED
    nodes = broker.nodes(wf)
    assert nodes["top/mid/again"].message == ("the spawned fragment more.xml was refused: more.xml:1:0: spawned 3 "
                                              "levels deep, limit 2 ([limits] max_spawn_depth)")


def test_a_spawning_node_with_a_stage_out_adds_its_nodes_once_the_stage_out_is_done(broker, tmp_path):
    source = fragment(tmp_path, f'<node id="a"><payload type="sh">{marker(tmp_path, "a")}</payload></node>')
    wf, state = broker.run(workflow(f"""
      <node id="plan">{spawner(str(source))}<stageOut source="more.xml" target="file://{tmp_path}/copy.xml"/></node>
      <node id="after"><dependsOn node="plan"/><payload type="sh">true</payload></node>"""))
    assert state is WorkflowState.SUCCEEDED
    nodes = broker.nodes(wf)
    assert (tmp_path / "copy.xml").read_text() == source.read_text()
    assert nodes["plan"].members == 1 and lines(tmp_path, "a") == ["plan/a 1"]
    assert nodes["after"].state == "succeeded"
    staged = [e for e in broker.events(wf) if e.node_path == "plan" and e.state == "staging_out"]
    spawned = [e for e in broker.events(wf) if e.type == "NODE_SPAWNED"]
    assert staged and spawned and staged[0].id < spawned[0].id


def test_restarting_the_workflow_gives_failed_spawned_nodes_a_fresh_attempt_without_spawning_again(broker, tmp_path):
    flag = tmp_path / "fixed"
    source = fragment(tmp_path, f'<node id="flaky"><payload type="sh">{marker(tmp_path, "flaky")}; '
                                f'test -e "{flag}"</payload></node>')
    wf, state = broker.run(workflow(f"""
      <node id="plan">{spawner(str(source), before=marker(tmp_path, "plan") + "; ")}</node>
      <node id="after"><dependsOn node="plan"/><payload type="sh">true</payload></node>"""))
    assert state is WorkflowState.FAILED
    flag.touch()
    broker.engine.restart(wf, "user:alice")
    assert broker.wait(wf) is WorkflowState.SUCCEEDED
    assert broker.node_states(wf) == {"plan": "succeeded", "plan/flaky": "succeeded", "after": "succeeded"}
    assert lines(tmp_path, "plan") == ["plan 1"] and lines(tmp_path, "flaky") == ["plan/flaky 1", "plan/flaky 2"]
