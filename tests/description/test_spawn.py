"""Spawned fragments: checked as a submission, plus the fragment-only rules; template names of spawned nodes."""

from __future__ import annotations

from broker.config import Settings
from broker.description import spawn

NS = 'xmlns="urn:workflow-broker:workflow:1.0"'
NODE = '<node id="a"><payload type="sh">true</payload></node>'


def check(body: str, depth: int = 0, attrs: str = ""):
    text = f'<workflow {NS} name="more"{attrs}>\n{body}\n</workflow>\n'
    nodes, problems = spawn.check_fragment(text, Settings(), "more.xml", depth)
    return nodes, [str(p) for p in problems]


def test_a_fragment_of_nodes_and_profiles_is_accepted():
    nodes, problems = check(f'<profiles><scheduling name="p"><cores>2</cores></scheduling></profiles>{NODE}')
    assert problems == [] and [n.id for n in nodes] == ["a"] and nodes[0].scheduling.cores is None


def test_workflow_wide_settings_are_refused_in_a_fragment():
    _, problems = check(f'<resources><host>h</host></resources>{NODE}', attrs=' priority="3"')
    assert problems == [
        "more.xml:1:0: a spawned fragment adds nodes only: workflow-wide resources belongs to the workflow it joins",
        "more.xml:1:0: a spawned fragment adds nodes only: workflow-wide priority belongs to the workflow it joins"]
    _, problems = check(f'<parameters><parameter name="x" type="string" default="a"/></parameters>{NODE}')
    assert problems == ["more.xml:1:0: a spawned fragment adds nodes only: workflow-wide parameters belongs to the "
                        "workflow it joins"]


def test_a_dependency_outside_the_fragment_and_the_spawn_depth_are_problems():
    _, problems = check('<node id="a"><dependsOn node="outside"/><payload type="sh">true</payload></node>')
    assert len(problems) == 1 and problems[0].startswith("more.xml:2:") and "outside" in problems[0]
    assert check(NODE, depth=4)[1] == ["more.xml:1:0: spawned 5 levels deep, limit 4 ([limits] max_spawn_depth)"]


def test_spawned_templates_name_their_spawner_and_attempt():
    assert spawn.prefix("sw/gen", 12, 2) == "sw/gen@12.2"
    assert spawn.owner("sw/gen@12.2/fit/run") == (12, 2)
    assert spawn.owner("top@1.1/mid@2.3/leaf") == (2, 3)
    assert spawn.owner("sw/gen") is None and spawn.depth("top@1.1/mid@2.3/leaf") == 2
    entry, refused = spawn.accept("f.xml", None, "it is a symlink (not followed)", attempt=1, spawn_depth=0,
                                  settings=Settings())
    assert entry is None and refused == "the spawned fragment f.xml could not be read: it is a symlink (not followed)"
