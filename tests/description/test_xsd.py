"""The one XSD helper every schema of the broker goes through (descriptions, hosts, selections, archives, events)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from lxml import etree

from broker.admin.reader import RECORD_XSD
from broker.admin.selection import SELECTION_XSD
from broker.description.schema import WORKFLOW_XSD, workflow_schema
from broker.description.xsd import Xsd, schema_dir
from broker.events.document import EVENT_XSD
from broker.resources.catalogue import HOSTS_XSD

SELECTION = "urn:workflow-broker:archive:1"


def _selection(state: str) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(
        f'<archive xmlns="{SELECTION}"><select><state>{state}</state></select></archive>'))


def test_every_schema_of_the_broker_compiles_once_from_the_schema_directory():
    for xsd in (WORKFLOW_XSD, HOSTS_XSD, SELECTION_XSD, RECORD_XSD, EVENT_XSD):
        assert xsd.path().parent == schema_dir()
        assert xsd.schema() is xsd.schema()
    assert workflow_schema() is WORKFLOW_XSD.schema()


def test_a_document_with_another_root_is_one_problem_naming_the_expected_root():
    tree = etree.ElementTree(etree.fromstring(b"<hosts/>"))
    problem = SELECTION_XSD.root_problem(tree, "sel.xml")
    assert str(problem) == (f"sel.xml:1:0: the root element must be <archive> in namespace '{SELECTION}', "
                            "not <hosts> without a namespace")
    assert SELECTION_XSD.root_problem(_selection("failed"), "sel.xml") is None


def test_errors_are_capped_and_counted_and_their_namespace_can_be_dropped():
    assert SELECTION_XSD.errors(_selection("failed")) == ([], 0)
    tree = etree.ElementTree(etree.fromstring(
        f'<archive xmlns="{SELECTION}"><select><state>running</state><state>up</state></select></archive>'))
    first, total = SELECTION_XSD.errors(tree, 1)
    assert total == 2 and len(first) == 1
    assert "{" + SELECTION + "}" in first[0].message
    assert SELECTION_XSD.plain(first[0].message).startswith("Element 'state'")


def test_threads_validating_with_one_schema_each_read_their_own_errors():
    """The schema keeps the log of its last validation: without the lock a thread reads another's log."""
    valid, invalid = _selection("failed"), _selection("running")

    def check(index: int) -> bool:
        tree = invalid if index % 2 else valid
        entries, _ = SELECTION_XSD.errors(tree)
        return bool(entries) == bool(index % 2)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(check, range(4000)))


def test_a_schema_file_that_is_missing_is_named():
    missing = Xsd("no-such.xsd", "urn:x", "x")
    try:
        missing.schema()
    except OSError as exc:
        assert "no-such.xsd" in str(exc)
    else:
        raise AssertionError("a missing schema file compiled")
