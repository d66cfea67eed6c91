"""Building the spec: defaults, profiles, payloads, referenced files, parameters."""

from __future__ import annotations

import os

import pytest

from broker.config import Settings
from broker.description.build import inline_script
from broker.description.load import load_description
from broker.description.model import (
    Execution, NodeSpec, Param, Payload, Requires, Retry, Scheduling, Stage, SweepSpec,
)
from broker.states import FailureConstraint
from tests.description.helpers import problems, with_include_dirs, with_limits, workflow

P = '<payload type="sh">echo</payload>'


def load(source: bytes, settings: Settings | None = None):
    return load_description(source, settings or Settings(), filename="t.xml")


def test_defaults_of_a_minimal_workflow():
    spec = load(workflow(f'<node id="a">{P}</node>'))
    assert spec.name == "t"
    assert spec.event_level == "STATUS"
    assert spec.priority == 0
    assert spec.failure == FailureConstraint()
    assert spec.resources == () and spec.max_in_flight is None and spec.publish_metadata_to is None
    assert spec.nodes == (NodeSpec(id="a", payload=Payload(type="sh", text="echo\n"), line=2),)


def test_workflow_attributes_and_children_are_read():
    spec = load(workflow(f"""
        <description>  what it does  </description>
        <resources><host>alpha</host><host>beta</host></resources>
        <failureConstraint maxFailed="2" fraction="0.25" onFailure="stop"/>
        <node id="a">{P}</node>""",
        attrs=' eventLevel="PROGRESS" priority="-5" publishMetadataTo="/topic/meta" maxInFlight="3"'))
    assert (spec.event_level, spec.priority, spec.publish_metadata_to, spec.max_in_flight) == (
        "PROGRESS", -5, "/topic/meta", 3)
    assert spec.description == "what it does"
    assert spec.resources == ("alpha", "beta")
    assert spec.failure == FailureConstraint(max_failed=2, fraction=0.25, on_failure="stop")


def test_a_node_carries_every_element_it_declares():
    spec = load(workflow("""
        <node id="a">
          <payload type="sh">echo</payload>
        </node>
        <node id="b" priority="7">
          <description>second</description>
          <dependsOn node="a"/>
          <requires parents="a"/>
          <scheduling><host>h1</host><queue>q</queue><nodes>2</nodes><cores>8</cores><memory>4GiB</memory>
            <walltime>1.5h</walltime><account>acct</account><directive name="exclusive"/></scheduling>
          <execution><env name="X" value="1"/><interpreter>python3.11</interpreter><workdir>sub</workdir>
            <retry count="3"/><timeout>90s</timeout></execution>
          <payload type="python">print(1)</payload>
          <stageIn source="file:///data/in" target="in" checksum="md5:0123456789abcdef0123456789abcdef"/>
          <stageOut source="out" target="file:///data/out"/>
          <output name="r"/>
        </node>"""))
    b = spec.nodes[1]
    assert b == NodeSpec(
        id="b", payload=Payload(type="python", text="print(1)\n"), line=5, priority=7, depends=("a",),
        requires=Requires(parents=("a",)),
        scheduling=Scheduling(hosts=("h1",), queue="q", nodes=2, cores=8, memory=4 * 1024**3, walltime=5400.0,
                              account="acct", directives=(("exclusive", None),)),
        execution=Execution(env=(("X", "1"),), interpreter="python3.11", workdir="sub",
                            retry=Retry(count=3, backoff=10.0, max_backoff=600.0), timeout=90.0),
        stage_in=(Stage("file:///data/in", "in", "md5:0123456789abcdef0123456789abcdef"),),
        stage_out=(Stage("out", "file:///data/out"),), outputs=("r",), description="second")


def test_a_tolerance_is_a_float_fraction():
    spec = load(workflow(f"""
        <node id="a">{P}</node>
        <node id="b"><dependsOn node="a"/><requires tolerance="0.8"/>{P}</node>"""))
    assert spec.nodes[1].requires == Requires(tolerance=0.8)


def test_an_empty_parents_list_means_no_parent_has_to_succeed():
    spec = load(workflow(f"""
        <node id="a">{P}</node>
        <node id="b"><dependsOn node="a"/><requires parents=""/>{P}</node>"""))
    assert spec.nodes[1].requires == Requires(parents=())


def test_profiles_apply_first_and_the_inline_block_overrides_them_per_element():
    spec = load(workflow(f"""
        <profiles>
          <scheduling name="big"><host>h1</host><queue>long</queue><cores>16</cores>
            <directive name="qos" value="high"/><directive name="constraint" value="gpu"/></scheduling>
          <execution name="env"><env name="A" value="1"/><env name="B" value="2"/>
            <retry count="2" backoff="1s" maxBackoff="5s"/><timeout>1h</timeout></execution>
        </profiles>
        <node id="plain" scheduling="big" execution="env">{P}</node>
        <node id="tuned" scheduling="big" execution="env">
          <scheduling><cores>4</cores><directive name="qos" value="low"/></scheduling>
          <execution><env name="B" value="3"/><env name="C" value="4"/></execution>
          {P}
        </node>
        <node id="inline-only"><scheduling><cores>2</cores></scheduling>{P}</node>"""))
    plain, tuned, inline_only = spec.nodes
    assert plain.scheduling == Scheduling(hosts=("h1",), queue="long", cores=16,
                                          directives=(("qos", "high"), ("constraint", "gpu")))
    assert plain.execution == Execution(env=(("A", "1"), ("B", "2")), timeout=3600.0,
                                        retry=Retry(count=2, backoff=1.0, max_backoff=5.0))
    assert tuned.scheduling == Scheduling(hosts=("h1",), queue="long", cores=4,
                                          directives=(("qos", "low"), ("constraint", "gpu")))
    assert tuned.execution == Execution(env=(("A", "1"), ("B", "3"), ("C", "4")), timeout=3600.0,
                                        retry=Retry(count=2, backoff=1.0, max_backoff=5.0))
    assert inline_only.scheduling == Scheduling(cores=2)
    assert inline_only.execution == Execution()


def test_inline_hosts_replace_the_profile_hosts():
    spec = load(workflow(f"""
        <profiles><scheduling name="p"><host>a</host><host>b</host></scheduling></profiles>
        <node id="n" scheduling="p"><scheduling><host>c</host></scheduling>{P}</node>"""))
    assert spec.nodes[0].scheduling.hosts == ("c",)


def test_profiles_and_nodes_require_tags_and_the_inline_tags_replace_the_profiles():
    spec = load(workflow(f"""
        <profiles><scheduling name="gpu"><tag>gpu</tag><tag>site-a</tag><cores>4</cores></scheduling></profiles>
        <node id="profiled" scheduling="gpu">{P}</node>
        <node id="own" scheduling="gpu"><scheduling><tag>bigmem</tag><tag>bigmem</tag></scheduling>{P}</node>"""))
    profiled, own = spec.nodes
    assert profiled.scheduling == Scheduling(tags=("gpu", "site-a"), cores=4)
    assert own.scheduling == Scheduling(tags=("bigmem",), cores=4)
    assert problems(workflow(f'<node id="n"><scheduling><tag>GPU;x</tag></scheduling>{P}</node>'))[0].endswith(
        "'GPU;x' does not match the pattern '[a-z0-9][a-z0-9_.\\-]{0,63}'")


def test_inline_payloads_lose_their_xml_indentation_so_python_runs():
    spec = load(workflow("""
        <node id="a">
          <payload type="python"><![CDATA[
            import sys
            if True:
                print("indented", file=sys.stderr)
          ]]></payload>
        </node>"""))
    assert spec.nodes[0].payload.text == 'import sys\nif True:\n    print("indented", file=sys.stderr)\n'


@pytest.mark.parametrize("raw, script", [
    ("echo hi", "echo hi\n"), ("  echo hi  ", "echo hi\n"), ("\n  a\n    b\n", "a\n  b\n"), ("\n \n", ""),
])
def test_inline_script_normalisation(raw, script):
    assert inline_script(raw) == script


def test_a_template_payload_is_marked_and_kept_verbatim():
    spec = load(workflow('<node id="a"><payload type="sh" template="1">echo {{ x }}</payload></node>'))
    assert spec.nodes[0].payload == Payload(type="sh", text="echo {{ x }}\n", template=True)


def test_sweeps_read_their_attributes_and_parameters():
    spec = load(workflow(f"""
        <node id="gen">{P}<output name="files"/></node>
        <sweep id="s" mode="zip" bundle="4" priority="3">
          <description>d</description>
          <dependsOn node="gen"/>
          <requires tolerance="0.5"/>
          <param name="a"><value> 1 </value><value>two</value></param>
          <param name="b"><range from="0" to="0.1" step="0.1"/></param>
          <param name="c"><fromOutput node="gen" property="files"/></param>
          <body><node id="x">{P}</node></body>
        </sweep>"""))
    sweep = spec.nodes[1]
    assert isinstance(sweep, SweepSpec)
    assert (sweep.id, sweep.mode, sweep.bundle, sweep.priority, sweep.line) == ("s", "zip", 4, 3, 3)
    assert (sweep.depends, sweep.requires, sweep.description) == (("gen",), Requires(tolerance=0.5), "d")
    assert sweep.params == (
        Param(name="a", source="list", values=(" 1 ", "two"), line=7),
        Param(name="b", source="range", values=("0", "0.1"), line=8),
        Param(name="c", source="output", from_node="gen", from_property="files", line=9),
    )
    assert [n.id for n in sweep.body] == ["x"]


# ------------------------------------------------------------------------------------ referenced files

@pytest.fixture
def include(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    return first, second


def test_a_payload_ref_is_read_from_the_include_dirs_in_order(include):
    first, second = include
    (second / "job.sh").write_text("echo from second\n")
    (second / "both.sh").write_text("echo second\n")
    (first / "both.sh").write_text("echo first\n")
    (first / "sub").mkdir()
    (first / "sub" / "deep.sh").write_text("  echo deep\n")
    spec = load(workflow("""
        <node id="a"><payload type="sh" ref="job.sh"/></node>
        <node id="b"><payload type="sh" ref="both.sh"/></node>
        <node id="c"><payload type="sh" ref="sub/deep.sh"/></node>"""), with_include_dirs(first, second))
    assert [n.payload for n in spec.nodes] == [
        Payload(type="sh", text="echo from second\n", ref="job.sh"),
        Payload(type="sh", text="echo first\n", ref="both.sh"),
        Payload(type="sh", text="  echo deep\n", ref="sub/deep.sh"),  # files are kept verbatim
    ]


def test_an_absolute_ref_inside_an_include_dir_is_allowed(include):
    first, _ = include
    (first / "abs.sh").write_text("echo abs\n")
    spec = load(workflow(f'<node id="a"><payload type="sh" ref="{first / "abs.sh"}"/></node>'),
                with_include_dirs(first))
    assert spec.nodes[0].payload.text == "echo abs\n"


def test_file_references_without_include_dirs_are_refused():
    assert problems(workflow('<node id="a"><payload type="sh" ref="job.sh"/></node>')) == [
        "bad.xml:2:0: node 'a': payload ref 'job.sh' cannot be read: file references are not allowed "
        "(no [description] include_dirs configured)"]


def test_refs_escaping_the_include_dirs_are_refused_whether_or_not_the_file_exists(include, tmp_path):
    first, _ = include
    (tmp_path / "secret.sh").write_text("echo SECRET\n")
    (first / "link.sh").symlink_to(tmp_path / "secret.sh")
    found = problems(workflow("""
        <node id="a"><payload type="sh" ref="../secret.sh"/></node>
        <node id="b"><payload type="sh" ref="../missing.sh"/></node>
        <node id="c"><payload type="sh" ref="/etc/passwd"/></node>
        <node id="d"><payload type="sh" ref="/no/such/file"/></node>
        <node id="e"><payload type="sh" ref="link.sh"/></node>
        <node id="f"><payload type="sh" ref="sub/../../secret.sh"/></node>"""), with_include_dirs(first))
    assert found == [
        "bad.xml:2:0: node 'a': payload ref '../secret.sh' is outside the include directories",
        "bad.xml:3:0: node 'b': payload ref '../missing.sh' is outside the include directories",
        "bad.xml:4:0: node 'c': payload ref '/etc/passwd' is outside the include directories",
        "bad.xml:5:0: node 'd': payload ref '/no/such/file' is outside the include directories",
        "bad.xml:6:0: node 'e': payload ref 'link.sh' is outside the include directories "
        "(a symbolic link points out of them)",
        "bad.xml:7:0: node 'f': payload ref 'sub/../../secret.sh' is outside the include directories",
    ]
    assert not any("SECRET" in p for p in found)


def test_a_missing_oversized_binary_or_special_ref_is_refused(include):
    first, _ = include
    (first / "big.sh").write_bytes(b"#" * 101)
    (first / "latin1.sh").write_bytes(b"echo caf\xe9\n")
    (first / "dir").mkdir()
    os.mkfifo(first / "fifo")
    found = problems(workflow("""
        <node id="a"><payload type="sh" ref="nope.sh"/></node>
        <node id="b"><payload type="sh" ref="big.sh"/></node>
        <node id="c"><payload type="sh" ref="latin1.sh"/></node>
        <node id="d"><payload type="sh" ref="dir"/></node>
        <node id="e"><payload type="sh" ref="fifo"/></node>"""),
        with_limits(with_include_dirs(first), max_file_bytes=100))
    assert found == [
        "bad.xml:2:0: node 'a': payload ref 'nope.sh' was not found in the include directories",
        "bad.xml:3:0: node 'b': payload ref 'big.sh' is 101 bytes, over the limit of 100 bytes "
        "([limits] max_file_bytes)",
        "bad.xml:4:0: node 'c': payload ref 'latin1.sh' is not UTF-8 text",
        "bad.xml:5:0: node 'd': payload ref 'dir' is not a regular file",
        "bad.xml:6:0: node 'e': payload ref 'fifo' is not a regular file",
    ]


def test_an_empty_ref_file_is_an_empty_payload(include):
    first, _ = include
    (first / "empty.sh").write_text("\n  \n")
    assert problems(workflow('<node id="a"><payload type="sh" ref="empty.sh"/></node>'),
                    with_include_dirs(first)) == ["bad.xml:2:0: node 'a': payload is empty"]


def test_a_lines_file_gives_one_value_per_non_empty_line(include):
    first, _ = include
    (first / "values.txt").write_text("alpha\n\n  beta  \r\ngamma delta\n\n")
    spec = load(workflow(f"""
        <sweep id="s">
          <param name="v"><lines file="values.txt"/></param>
          <body><node id="n">{P}</node></body>
        </sweep>"""), with_include_dirs(first))
    assert spec.nodes[0].params[0] == Param(name="v", source="lines", values=("alpha", "beta", "gamma delta"),
                                            line=3)


def test_a_lines_file_over_max_values_or_outside_the_dirs_is_refused(include):
    first, _ = include
    (first / "values.txt").write_text("1\n2\n3\n")
    found = problems(workflow(f"""
        <sweep id="s">
          <param name="v"><lines file="values.txt"/></param>
          <param name="w"><lines file="../values.txt"/></param>
          <body><node id="n">{P}</node></body>
        </sweep>"""), with_limits(with_include_dirs(first), max_values=2))
    assert found == [
        "bad.xml:3:0: sweep 's': parameter 'v': lines file 'values.txt' has 3 values, over the limit of 2 "
        "([limits] max_values)",
        "bad.xml:4:0: sweep 's': parameter 'w': lines file '../values.txt' is outside the include directories",
    ]


def test_directive_values_may_be_comma_lists():
    spec = load(workflow(f"""
        <node id="a">
          <scheduling><directive name="mail-type" value="END,FAIL"/><directive name="licenses" value="a:1,b:2"/>
          </scheduling>
          {P}
        </node>"""))
    assert spec.nodes[0].scheduling.directives == (("mail-type", "END,FAIL"), ("licenses", "a:1,b:2"))
