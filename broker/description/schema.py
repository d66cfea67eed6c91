"""XSD validation of a parsed description with lxml's validator (fast enough for 100,000-node documents).

Each schema error becomes a :class:`~broker.errors.Problem` whose message names the node it is in and
reads without lxml's ``{urn:...}`` namespace noise::

    wf.xml:9:0: node 'b': <payload> attribute 'type': the value 'perl' is not one of 'sh', 'bash', 'python', 'csh'

Never hand description text to xmlschema (it may read a string as a path or URL): only lxml sees it.

At most :data:`MAX_PROBLEMS` schema problems are reported (then one line saying validation stopped). That
bound is also what keeps validation linear: lxml computes the XPath of every error it collects, which walks
the element's preceding siblings, so 100,000 invalid nodes side by side cost about 100,000 x 50,000 steps
(minutes) and about a gigabyte of error entries. A large tree is therefore first validated while its bytes
are parsed again (libxml2's streaming validator, which locates nothing), fed in chunks and stopped once
:data:`MAX_PROBLEMS` errors were seen; only the elements up to that point are then validated as a tree, for
lines and node names. A valid large document pays one more parse for this (about 0.5 s of CPU per 100,000
nodes; the tree that parse builds is dropped as it goes).
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from broker.description.xsd import Xsd, schema_dir
from broker.errors import Problem

#: the namespace of the description language
NAMESPACE = "urn:workflow-broker:workflow:1.0"
SCHEMA_FILE = "workflow.xsd"

_NS_NOISE = re.compile(r"\{" + re.escape(NAMESPACE) + r"\}")
_ELEMENT_ATTR = re.compile(r"^Element '([^']+)', attribute '([^']+)': ")
_ELEMENT = re.compile(r"^Element '([^']+)': ")
_FACET = re.compile(r"\[facet '[^']+'\] ")
_SET = re.compile(r"The value '(.*)' is not an element of the set \{(.*)\}\.?$")
_PATTERN = re.compile(r"The value '(.*)' is not accepted by the pattern '(.*)'\.?$")
_ATOMIC = re.compile(r"'(.*)' is not a valid value of the atomic type '(?:xs:)?([^']+)'\.?$")
_EXPECTED = re.compile(r"Expected is(?: one of)? \( (.*) \)\.?$")

#: what the XSD's atomic types mean, for messages
_TYPE_MEANING = {
    "Priority": "a priority (an integer from -1000000 to 1000000)",
    "Decimal": "a decimal number (up to 18 digits)",
    "Fraction": "a fraction from 0 to 1",
    "Count": "a count (an integer of at least 1)",
    "boolean": "a boolean (true, false, 1 or 0)",
    "int": "an integer",
    "decimal": "a decimal number",
}

#: what the XSD's patterns mean, for messages (a pattern missing here is quoted as it is)
_PATTERN_MEANING = {
    r"[0-9]{1,9}(\.[0-9]{1,6})?(ms|s|min|h|d)": "a duration with a unit: 500ms, 90s, 15min, 1.5h or 2d",
    r"[0-9]{1,12}(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)": "a size with a unit: 500MB, 512MiB or 4GiB",
    r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}": "a node id (1 to 64 letters, digits, '_', '.' or '-', not starting "
                                         "with '.' or '-')",
    r"[A-Za-z_][A-Za-z0-9_]{0,63}": "a name (a letter or '_', then up to 63 letters, digits or '_')",
    r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}": "a profile name (a letter or '_', then letters, digits, '_', '.', '-')",
    r"[A-Za-z_][A-Za-z0-9_]{0,127}": "an environment variable name",
    r"[^\p{Cc}]*": "single-line text without control characters",
    r"[A-Za-z0-9_.\-+:@,]{1,128}": "a scheduler token (letters, digits and _ . - + : @ ,)",
    r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}|md5:[0-9a-f]{32}":
        "a checksum sha256:<64 hex>, sha512:<128 hex> or md5:<32 hex>",
    r"/(topic|queue)/[A-Za-z0-9_.\-]{1,200}": "a destination /topic/NAME or /queue/NAME",
}


#: the description schema (its root element is <workflow>)
WORKFLOW_XSD = Xsd(SCHEMA_FILE, NAMESPACE, "workflow")


def schema_path() -> Path:
    """The path of ``workflow.xsd``."""
    return WORKFLOW_XSD.path()


def workflow_schema() -> etree.XMLSchema:
    """The compiled description schema, loaded once per process."""
    return WORKFLOW_XSD.schema()


#: characters of a quoted value a message shows (values may be up to [limits] max_text_bytes long)
SHOWN_VALUE = 64


def _short(value: str) -> str:
    """A value as a message quotes it: whole when short, else its start and its length."""
    if len(value) <= SHOWN_VALUE:
        return f"'{value}'"
    return f"'{value[:SHOWN_VALUE]}...' ({len(value)} characters)"


def _describe(value: str, pattern: str) -> str:
    meaning = _PATTERN_MEANING.get(pattern)
    return f"{_short(value)} is not {meaning}" if meaning else f"{_short(value)} does not match the pattern '{pattern}'"


def readable(message: str) -> str:
    """An lxml schema message without namespace noise, in the broker's wording."""
    text = _NS_NOISE.sub("", message.strip())
    match = _ELEMENT_ATTR.match(text)
    if match:
        where, text = f"<{match.group(1)}> attribute '{match.group(2)}': ", text[match.end():]
    else:
        match = _ELEMENT.match(text)
        where, text = (f"<{match.group(1)}>: ", text[match.end():]) if match else ("", text)
    text = _FACET.sub("", text)
    if (m := _SET.search(text)) is not None:
        text = f"the value {_short(m.group(1))} is not one of {m.group(2)}"
    elif (m := _PATTERN.search(text)) is not None:
        text = _describe(m.group(1), m.group(2))
    elif (m := _ATOMIC.search(text)) is not None:
        text = f"{_short(m.group(1))} is not {_TYPE_MEANING.get(m.group(2), 'a valid ' + m.group(2))}"
    elif text.startswith(("This element is not expected.", "Missing child element(s).")):
        expected = _EXPECTED.search(text)
        text = "element not allowed here" if text.startswith("This") else "missing child element"
        if expected is not None:
            text += f" (expected one of: {expected.group(1)})"
    return where + text.rstrip(".")


def owner_label(element: etree._Element | None) -> str:
    """``node 'a/b': `` (or ``sweep ...``, ``scheduling profile ...``) for an element inside one, else ``""``."""
    path: list[str] = []
    kind = ""
    while element is not None:
        if isinstance(element.tag, str):
            name = etree.QName(element).localname
            parent = element.getparent()
            if name in ("node", "sweep"):
                kind = kind or name
                node_id = element.get("id", "?")
                path.append(node_id if len(node_id) <= SHOWN_VALUE else node_id[:SHOWN_VALUE] + "...")
            elif parent is not None and etree.QName(parent).localname == "profiles":
                return f"{name} profile {_short(element.get('name', '?'))}: "
        element = element.getparent()
    return f"{kind} '{'/'.join(reversed(path))}': " if kind else ""


#: schema problems reported for one document at most
MAX_PROBLEMS = 100
#: elements and attributes up to which a tree is validated directly: at most this many errors, each located
#: in at most this many steps
SMALL_TREE = 10_000
#: bytes the streaming validator is fed at a time: how far it may read past the MAX_PROBLEMS-th error
STREAM_CHUNK = 16 * 1024


def _tree_size(root: etree._Element, cap: int) -> int:
    """Elements and attributes under ``root``, counted up to just past ``cap``."""
    size = 0
    for el in root.iter(etree.Element):
        size += 1 + len(el.attrib)
        if size > cap:
            break
    return size


def _stream_errors(data: bytes) -> int | None:
    """Validate a document while parsing it; None if valid, -1 if it has fewer than MAX_PROBLEMS errors,
    else how many elements (in document order) hold the first MAX_PROBLEMS errors.

    The validator works on the parser's events, not on the tree it builds: after each chunk every element
    that has ended is dropped (all but the last child at each level of the open path), so this second
    tree never holds more than a chunk's worth (it held 140 MB of a 100,000-node document).
    """
    parser = etree.XMLPullParser(events=("start",), tag=f"{{{NAMESPACE}}}workflow", schema=workflow_schema(),
                                 resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False,
                                 collect_ids=False, remove_comments=True, remove_pis=True)
    root = None
    for start in range(0, len(data), STREAM_CHUNK):
        parser.feed(data[start:start + STREAM_CHUNK])
        for _, element in parser.read_events():
            root = element
        if len(parser.feed_error_log) >= MAX_PROBLEMS:  # the property copies the log: it stays short
            return _elements_in(data[:start + STREAM_CHUNK])
        node = root
        while node is not None and len(node):
            if len(node) > 1:
                del node[:-1]  # earlier siblings have ended: only the last child may still be open
            node = node[-1]
    try:
        parser.close()
        return None
    except etree.XMLSyntaxError:
        return -1  # fewer than MAX_PROBLEMS schema errors


def _elements_in(head: bytes) -> int:
    """How many elements start in the first bytes of a document (a count of start events, not of '<':
    comments and CDATA sections may hold those)."""
    parser = etree.XMLPullParser(events=("start",), resolve_entities=False, load_dtd=False, no_network=True,
                                 huge_tree=False, collect_ids=False)
    count = 0
    for start in range(0, len(head), STREAM_CHUNK):
        parser.feed(head[start:start + STREAM_CHUNK])
        count += sum(1 for _ in parser.read_events())
    return count


def _prune(root: etree._Element, keep: int) -> None:
    """Cut the tree after its first ``keep`` elements in document order (the rest is never validated)."""
    last = root
    for count, el in enumerate(root.iter(etree.Element), start=1):
        last = el
        if count >= keep:
            break
    for child in list(last):
        last.remove(child)
    node: etree._Element | None = last
    while node is not None:
        parent = node.getparent()
        if parent is not None:
            for sibling in list(node.itersiblings()):
                parent.remove(sibling)
        node = parent


def validate_tree(tree: etree._ElementTree, *, filename: str = "<string>", source: bytes | None = None) -> list[Problem]:
    """The schema errors of ``tree`` as Problems, at most MAX_PROBLEMS and a last one saying validation
    stopped (an empty list when it is valid). A tree that is not valid may be cut short in the process.

    ``source``: the bytes the tree was parsed from (by the hardened parser), streamed again for a large
    tree; without them the tree is serialised.
    """
    wrong_root = WORKFLOW_XSD.root_problem(tree, filename)
    if wrong_root is not None:
        return [wrong_root]
    root = tree.getroot()
    stopped = False
    if _tree_size(root, SMALL_TREE) > SMALL_TREE:
        keep = _stream_errors(source if source is not None else etree.tostring(root))
        if keep is None:
            return []
        if keep > 0:
            _prune(root, keep)
            stopped = True
    entries, total = WORKFLOW_XSD.errors(tree, MAX_PROBLEMS)
    if not entries:
        return []
    stopped = stopped or total > MAX_PROBLEMS
    problems = []
    for entry in entries:
        element = None
        if entry.path:
            try:
                found = tree.xpath(entry.path)
                element = found[0] if found else None
            except etree.XPathError:
                element = None
        problems.append(Problem(filename, max(entry.line, 1), max(entry.column, 0),
                                owner_label(element) + readable(entry.message)))
    if stopped:
        problems.append(Problem(filename, problems[-1].line, problems[-1].column,
                                f"schema validation stopped after {MAX_PROBLEMS} problems"))
    return problems


__all__ = ["MAX_PROBLEMS", "NAMESPACE", "owner_label", "readable", "schema_dir", "schema_path", "validate_tree",
           "workflow_schema"]
