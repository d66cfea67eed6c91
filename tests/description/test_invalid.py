"""Invalid descriptions: one small document per kind of error, each with its exact message and line."""

from __future__ import annotations

import pytest

from broker.config import Settings
from broker.description.load import load_description
from broker.errors import DescriptionError
from tests.description.helpers import NS, doc, problems, with_limits, workflow

ALLOWED = "begin constraint exclusive gres hint licenses mail-type nice qos reservation"
P = '<payload type="sh">echo</payload>'

# name -> (body of a workflow whose root is line 1 and body starts at line 2, settings or None, problems)
CASES: dict[str, tuple[str, Settings | None, list[str]]] = {
    "duplicate id at the top level": (f"""
        <node id="a">{P}</node>
        <node id="a">{P}</node>""", None,
        ["bad.xml:3:0: node 'a': duplicate id at the top level (first used at line 2)"]),
    "duplicate id in a sweep body": (f"""
        <sweep id="s">
          <param name="x"><value>1</value></param>
          <body>
            <node id="b">{P}</node>
            <sweep id="b"><param name="y"><value>1</value></param><body><node id="c">{P}</node></body></sweep>
          </body>
        </sweep>""", None,
        ["bad.xml:6:0: sweep 's/b': duplicate id in the scope of sweep 's' (first used at line 5)"]),
    "the same id in two scopes is fine, a dangling dependency at the top level is not": (f"""
        <node id="a">{P}</node>
        <node id="b"><dependsOn node="zz"/>{P}</node>""", None,
        ["bad.xml:3:0: node 'b': depends on 'zz', but there is no node 'zz' at the top level"]),
    "a body node depending on a top-level node": (f"""
        <node id="a">{P}</node>
        <sweep id="s">
          <dependsOn node="a"/>
          <param name="x"><value>1</value></param>
          <body><node id="b"><dependsOn node="a"/>{P}</node></body>
        </sweep>""", None,
        ["bad.xml:6:0: node 's/b': depends on 'a', but there is no node 'a' in the scope of sweep 's'"]),
    "a top-level node depending on a body node": (f"""
        <sweep id="s">
          <param name="x"><value>1</value></param>
          <body><node id="b">{P}</node></body>
        </sweep>
        <node id="c"><dependsOn node="b"/>{P}</node>""", None,
        ["bad.xml:6:0: node 'c': depends on 'b', but there is no node 'b' at the top level"]),
    "self-dependency": (f"""
        <node id="a"><dependsOn node="a"/>{P}</node>""", None,
        ["bad.xml:2:0: node 'a': depends on itself"]),
    "the same dependency twice": (f"""
        <node id="a">{P}</node>
        <node id="b"><dependsOn node="a"/><dependsOn node="a"/>{P}</node>""", None,
        ["bad.xml:3:0: node 'b': depends on 'a' twice"]),
    "a cycle of three": (f"""
        <node id="a"><dependsOn node="c"/>{P}</node>
        <node id="b"><dependsOn node="a"/>{P}</node>
        <node id="c"><dependsOn node="b"/>{P}</node>
        <node id="d"><dependsOn node="c"/>{P}</node>""", None,
        ["bad.xml:2:0: node 'a': dependency cycle: a -> c -> b -> a"]),
    "a cycle inside a sweep body": (f"""
        <sweep id="s">
          <param name="x"><value>1</value></param>
          <body>
            <node id="p"><dependsOn node="q"/>{P}</node>
            <node id="q"><dependsOn node="p"/>{P}</node>
          </body>
        </sweep>""", None,
        ["bad.xml:5:0: node 's/p': dependency cycle: p -> q -> p"]),
    "requires with both parents and tolerance": (f"""
        <node id="a">{P}</node>
        <node id="b"><dependsOn node="a"/><requires parents="a" tolerance="0.5"/>{P}</node>""", None,
        ["bad.xml:3:0: node 'b': <requires> takes parents or tolerance, not both"]),
    "requires with neither parents nor tolerance": (f"""
        <node id="a">{P}</node>
        <node id="b"><dependsOn node="a"/><requires/>{P}</node>""", None,
        ["bad.xml:3:0: node 'b': <requires> needs parents or tolerance"]),
    "requires naming a parent that is not a dependency": (f"""
        <node id="a">{P}</node>
        <node id="x">{P}</node>
        <node id="b">
          <dependsOn node="a"/>
          <requires parents="a x"/>
          {P}
        </node>""", None,
        ["bad.xml:6:0: node 'b': requires parent 'x', which is not in its dependsOn"]),
    "unknown profiles": (f"""
        <node id="a" scheduling="big" execution="slow">{P}</node>""", None,
        ["bad.xml:2:0: node 'a': unknown scheduling profile 'big'",
         "bad.xml:2:0: node 'a': unknown execution profile 'slow'"]),
    "duplicate profile names": (f"""
        <profiles>
          <scheduling name="p"><cores>1</cores></scheduling>
          <execution name="p"><timeout>1s</timeout></execution>
          <scheduling name="p"><cores>2</cores></scheduling>
        </profiles>
        <node id="a" scheduling="p">{P}</node>""", None,
        ["bad.xml:5:0: duplicate scheduling profile 'p' (first defined at line 3)"]),
    "a directive outside the allowlist": (f"""
        <profiles>
          <scheduling name="p"><directive name="partition" value="x"/></scheduling>
        </profiles>
        <node id="a">
          <scheduling><directive name="qos" value="low"/><directive name="wrap" value="x"/></scheduling>
          {P}
        </node>""", None,
        [f"bad.xml:3:0: scheduling profile 'p': directive 'partition' is not allowed "
         f"([description] allowed_directives: {ALLOWED})",
         f"bad.xml:6:0: node 'a': directive 'wrap' is not allowed ([description] allowed_directives: {ALLOWED})"]),
    "a reserved environment variable": (f"""
        <profiles><execution name="e"><env name="WB_PARAM_x" value="1"/></execution></profiles>
        <node id="a">
          <execution><env name="PATH" value="/bin"/><env name="WB_NODE" value="x"/></execution>
          {P}
        </node>""", None,
        ["bad.xml:2:0: execution profile 'e': environment variable 'WB_PARAM_x' is reserved "
         "(names starting with WB_ belong to the broker)",
         "bad.xml:4:0: node 'a': environment variable 'WB_NODE' is reserved "
         "(names starting with WB_ belong to the broker)"]),
    "an empty payload": ("""
        <node id="a">
          <payload type="sh">
          </payload>
        </node>""", None,
        ["bad.xml:3:0: node 'a': payload is empty"]),
    "a payload with both a ref and inline text": ("""
        <node id="a"><payload type="sh" ref="x.sh">echo</payload></node>""", None,
        ["bad.xml:2:0: node 'a': payload has both a ref and inline text"]),
    "a template that does not parse": ("""
        <node id="a">
          <payload type="sh" template="true"><![CDATA[
            echo {{ x }}
            echo {{ x + }}
          ]]></payload>
        </node>""", None,
        ["bad.xml:3:0: node 'a': payload template line 2: unexpected 'end of print statement'"]),
    "a template using what the renderer refuses": ("""
        <node id="a"><payload type="sh" template="true">{% include "/etc/passwd" %}</payload></node>
        <node id="b"><payload type="python" template="true">{{ x | no_such_filter }}</payload></node>""", None,
        ["bad.xml:2:0: node 'a': payload template line 1: include, import and extends are not available",
         "bad.xml:3:0: node 'b': payload template line 1: No filter named 'no_such_filter'"]),
    "a duplicate output": (f"""
        <node id="a">{P}<output name="r"/><output name="r"/></node>""", None,
        ["bad.xml:2:0: node 'a': duplicate output 'r'"]),
    "a fromOutput node that is not a dependency of the sweep": (f"""
        <node id="gen">{P}<output name="files"/></node>
        <sweep id="s">
          <param name="f"><fromOutput node="gen" property="files"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:4:0: sweep 's': parameter 'f' reads output 'files' of 'gen', "
         "which is not in the sweep's dependsOn"]),
    "a fromOutput property that is not declared": (f"""
        <node id="gen">{P}<output name="file"/></node>
        <sweep id="s">
          <dependsOn node="gen"/>
          <param name="f"><fromOutput node="gen" property="files"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:5:0: sweep 's': parameter 'f' reads output 'files' of 'gen', which declares no output 'files'"]),
    "a fromOutput naming a sweep": (f"""
        <sweep id="g"><param name="x"><value>1</value></param><body><node id="n">{P}</node></body></sweep>
        <sweep id="s">
          <dependsOn node="g"/>
          <param name="f"><fromOutput node="g" property="files"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:5:0: sweep 's': parameter 'f' reads output 'files' of 'g', "
         "which is a sweep (only nodes declare outputs)"]),
    "zip parameters of different lengths": (f"""
        <sweep id="s" mode="zip">
          <param name="x"><value>1</value><value>2</value><value>3</value></param>
          <param name="y"><range from="1" to="2"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:2:0: sweep 's': zip parameters have different lengths (x=3, y=2)"]),
    "duplicate parameter names": (f"""
        <sweep id="s">
          <param name="x"><value>1</value></param>
          <param name="x"><value>2</value></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:4:0: sweep 's': duplicate parameter 'x'"]),
    "a range with step 0": (f"""
        <sweep id="s">
          <param name="x"><range from="1" to="2" step="0"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:3:0: sweep 's': parameter 'x': <range>: step must not be 0"]),
    "a range whose step points away from to": (f"""
        <sweep id="s">
          <param name="x"><range from="1" to="2" step="-0.5"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:3:0: sweep 's': parameter 'x': <range>: step -0.5 never reaches 2 from 1 (the step must go up)"]),
    "a range with too many values": (f"""
        <sweep id="s">
          <param name="x"><range from="0" to="100000000000000000"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", None,
        ["bad.xml:3:0: sweep 's': parameter 'x': <range>: 100000000000000001 values, over the limit of 200000 "
         "([limits] max_values)"]),
    "a value list over max_values": (f"""
        <sweep id="s">
          <param name="x"><value>1</value><value>2</value><value>3</value></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", with_limits(max_values=2),
        ["bad.xml:3:0: sweep 's': parameter 'x': 3 values, over the limit of 2 ([limits] max_values)"]),
    "a sweep over max_members": (f"""
        <sweep id="s">
          <param name="x"><range from="1" to="3"/></param>
          <param name="y"><range from="1" to="3"/></param>
          <body><node id="b">{P}</node></body>
        </sweep>""", with_limits(max_members=8),
        ["bad.xml:2:0: sweep 's': expands to 9 members, over the limit of 8 ([limits] max_members)"]),
    "sweeps nested deeper than max_nesting": (f"""
        <sweep id="a"><param name="x"><value>1</value></param><body>
          <sweep id="b"><param name="y"><value>1</value></param><body>
            <sweep id="c"><param name="z"><value>1</value></param><body>
              <node id="n">{P}</node>
            </body></sweep>
          </body></sweep>
        </body></sweep>""", with_limits(max_nesting=2),
        ["bad.xml:4:0: sweep 'a/b/c': sweeps nested 3 deep, over the limit of 2 ([limits] max_nesting)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_kind_of_error_is_reported_with_its_exact_message_and_line(case):
    body, settings, expected = CASES[case]
    assert problems(workflow(body), settings) == expected


def test_the_node_count_after_expansion_is_checked_arithmetically():
    source = workflow(f"""
        <node id="gen">{P}<output name="out"/></node>
        <sweep id="s">
          <param name="x"><range from="1" to="10"/></param>
          <body>
            <node id="b">{P}<output name="out"/></node>
            <sweep id="t">
              <dependsOn node="b"/>
              <param name="y"><range from="1" to="10"/></param>
              <param name="f"><fromOutput node="b" property="out"/></param>
              <body><node id="c">{P}</node></body>
            </sweep>
          </body>
        </sweep>""")
    # gen 1 + s (1 + 10 x (b 1 + t (1 + 10 x 1 x c 1))) = 1 + 1 + 10 x 12 = 122
    assert problems(source, with_limits(max_nodes=122)) == []
    assert problems(source, with_limits(max_nodes=121)) == [
        "bad.xml:1:0: workflow expands to 122 nodes, over the limit of 121 ([limits] max_nodes)"]


def test_an_explosive_sweep_is_counted_without_being_expanded():
    ranges = "".join(f'<param name="p{i}"><range from="1" to="1000"/></param>' for i in range(6))
    source = workflow(f'<sweep id="boom">{ranges}<body><node id="b">{P}</node></body></sweep>')
    assert problems(source) == [
        "bad.xml:2:0: sweep 'boom': expands to 1000000000000000000 members, over the limit of 200000 "
        "([limits] max_members)",
        "bad.xml:1:0: workflow expands to 1000000000000000001 nodes, over the limit of 1000000 ([limits] max_nodes)",
    ][::-1]


def test_a_document_with_several_errors_reports_all_of_them_sorted_by_line():
    source = workflow(f"""
        <node id="a" execution="nope"><dependsOn node="a"/>{P}</node>
        <node id="b"><dependsOn node="zz"/><payload type="sh"> </payload></node>
        <node id="b">
          <execution><env name="WB_X" value="1"/></execution>
          {P}
        </node>
        <sweep id="s" mode="zip">
          <param name="x"><value>1</value></param>
          <param name="x"><range from="1" to="2"/></param>
          <body><node id="c"><dependsOn node="b"/>{P}</node></body>
        </sweep>""")
    assert problems(source) == [
        "bad.xml:2:0: node 'a': unknown execution profile 'nope'",
        "bad.xml:2:0: node 'a': depends on itself",
        "bad.xml:3:0: node 'b': payload is empty",
        "bad.xml:3:0: node 'b': depends on 'zz', but there is no node 'zz' at the top level",
        "bad.xml:4:0: node 'b': duplicate id at the top level (first used at line 3)",
        "bad.xml:5:0: node 'b': environment variable 'WB_X' is reserved (names starting with WB_ belong to the broker)",
        "bad.xml:8:0: sweep 's': zip parameters have different lengths (x=1, x=2)",
        "bad.xml:10:0: sweep 's': duplicate parameter 'x'",
        "bad.xml:11:0: node 's/c': depends on 'b', but there is no node 'b' in the scope of sweep 's'",
    ]


def test_load_description_raises_one_error_carrying_every_problem():
    source = workflow(f'<node id="a"><dependsOn node="x"/><dependsOn node="y"/>{P}</node>')
    with pytest.raises(DescriptionError) as caught:
        load_description(source, Settings(), filename="bad.xml")
    assert [str(p) for p in caught.value.problems] == [
        "bad.xml:2:0: node 'a': depends on 'x', but there is no node 'x' at the top level",
        "bad.xml:2:0: node 'a': depends on 'y', but there is no node 'y' at the top level",
    ]
    assert str(caught.value) == ("bad.xml:2:0: node 'a': depends on 'x', but there is no node 'x' at the top level "
                                 "(and 1 more)")


# ------------------------------------------------------------------------------------------ schema errors

def test_schema_errors_name_the_node_and_drop_the_namespace_noise():
    source = workflow("""
        <node id="a" priority="high">
          <payload type="perl">echo</payload>
        </node>
        <sweep id="s">
          <param name="p"><range from="1" to="ten"/></param>
          <body><node id="b">
            <scheduling><memory>4G</memory><walltime>1x</walltime></scheduling>
            <payload type="sh">x</payload>
            <foo/>
          </node></body>
        </sweep>
        <node id="c"><description>no payload</description></node>""", attrs=' eventLevel="LOUD"')
    assert problems(source) == [
        "bad.xml:1:0: <workflow> attribute 'eventLevel': the value 'LOUD' is not one of "
        "'ERROR', 'INFO', 'STATUS', 'PROGRESS', 'DEBUG'",
        "bad.xml:2:0: node 'a': <node> attribute 'priority': 'high' is not a priority "
        "(an integer from -1000000 to 1000000)",
        "bad.xml:3:0: node 'a': <payload> attribute 'type': the value 'perl' is not one of "
        "'sh', 'bash', 'python', 'csh'",
        "bad.xml:6:0: sweep 's': <range> attribute 'to': 'ten' is not a decimal number (up to 18 digits)",
        "bad.xml:8:0: node 's/b': <memory>: '4G' is not a size with a unit: 500MB, 512MiB or 4GiB",
        "bad.xml:8:0: node 's/b': <walltime>: '1x' is not a duration with a unit: 500ms, 90s, 15min, 1.5h or 2d",
        "bad.xml:10:0: node 's/b': <foo>: element not allowed here (expected one of: stageIn, stageOut, output)",
        "bad.xml:13:0: node 'c': <node>: missing child element "
        "(expected one of: dependsOn, requires, scheduling, execution, payload)",
    ]


def test_a_root_element_outside_the_namespace_is_named():
    assert problems(doc('<workflow name="x"><node id="a"/></workflow>')) == [
        "bad.xml:1:0: the root element must be <workflow> in namespace "
        "'urn:workflow-broker:workflow:1.0', not <workflow> without a namespace"]


def test_malformed_xml_is_reported_at_the_parser_position():
    source = doc(f"""
        <workflow xmlns="{NS}" name="x">
          <node id="a"><payload type="sh">echo</node>
        </workflow>""")
    assert problems(source) == [
        "bad.xml:2:46: not well-formed XML: Opening and ending tag mismatch: payload line 2 and node"]


def test_an_empty_document_is_rejected_with_a_location():
    assert problems(b"") == ["bad.xml:1:1: not well-formed XML: Document is empty"]


def test_schema_errors_inside_a_profile_name_the_profile():
    source = workflow("""
        <profiles>
          <scheduling name="p"><memory>4G</memory></scheduling>
          <execution name="e"><timeout>soon</timeout></execution>
        </profiles>
        <node id="a"><payload type="sh">x</payload></node>""")
    assert problems(source) == [
        "bad.xml:3:0: scheduling profile 'p': <memory>: '4G' is not a size with a unit: 500MB, 512MiB or 4GiB",
        "bad.xml:4:0: execution profile 'e': <timeout>: 'soon' is not a duration with a unit: "
        "500ms, 90s, 15min, 1.5h or 2d",
    ]


def test_long_values_are_shortened_in_messages():
    long_id = "x" * 5000
    found = problems(workflow(f'<node id="{long_id}"><payload type="sh">echo</payload></node>'))
    shown = "x" * 64 + "..."
    assert found == [f"bad.xml:2:0: node '{shown}': <node> attribute 'id': '{shown}' (5000 characters) "
                     "is not a node id (1 to 64 letters, digits, '_', '.' or '-', not starting with '.' or '-')"]
