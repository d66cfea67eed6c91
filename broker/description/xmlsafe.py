"""Hardened XML parsing of untrusted descriptions: bytes in, an lxml tree with line numbers out.

Every rejection is a :class:`~broker.errors.Problem` with a location (``1:0`` when nothing better is known).
The defences, in the order they run:

1. size: a document over ``[limits] max_document_bytes`` is rejected before anything else looks at it;
2. encoding: only UTF-8 and UTF-16 (by byte order mark, first bytes or declaration). UTF-7, latin-1,
   EBCDIC, UTF-32... are rejected by name: lxml decodes UTF-7 into markup that other tools read as text;
3. prolog scan: any ``<!DOCTYPE`` is rejected *before* parsing, so no entity (billion laughs, quadratic
   blowup, external entities, parameter entities) and no DTD is ever expanded, loaded or fetched;
4. libxml2 runs with entity substitution, DTD loading and network access off and its default (non-huge)
   resource limits, so an undefined entity reference or a 10,000-level nesting fails fast;
5. after parsing, before anything whose cost grows faster than the document: attributes are counted
   (``[limits] max_attributes_per_element`` and ``max_attributes``: libxml2 parses 100,000 attributes on one
   element in a blink, but every later step that looks at them, the XSD validator first, pays per attribute
   and per sibling);
6. the tree is checked again for a DTD (defence in depth), for XInclude elements (never processed: the XSD
   would reject them anyway, this says why), for elements nested deeper than ``[limits] max_xml_depth`` and
   for text or attribute values over ``[limits] max_text_bytes``.

Every check after parsing is one walk over the tree. :func:`attribute_flood` is public: the SOAP edge applies
the same attribute caps to request envelopes.

Comments and processing instructions are dropped while parsing, so a payload's text is never split by one.
"""

from __future__ import annotations

import re

from lxml import etree

from broker.config import LimitSettings
from broker.errors import DescriptionError, Problem

#: encodings a description may use (upper-cased declaration names)
ALLOWED_ENCODINGS = frozenset({"UTF-8", "UTF-16", "UTF-16LE", "UTF-16BE"})
#: libxml2's own nesting limit without XML_PARSE_HUGE; [limits] max_xml_depth cannot go beyond it
PARSER_MAX_DEPTH = 256
XINCLUDE_NAMESPACES = ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude")

# (prefix, name) pairs recognised from the first bytes; the unsupported ones are rejected by name
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xfe\xff", "UTF-16BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"+/v8", "UTF-7"), (b"+/v9", "UTF-7"), (b"+/v+", "UTF-7"), (b"+/v/", "UTF-7"),
    (b"\x00\x00\x00\x3c", "UTF-32"),
    (b"\x3c\x00\x00\x00", "UTF-32"),
    (b"\x00\x3c\x00\x3f", "UTF-16BE"),
    (b"\x3c\x00\x3f\x00", "UTF-16LE"),
    (b"\x4c\x6f\xa7\x94", "EBCDIC"),
)
_BOMS = {b"\xef\xbb\xbf": "UTF-8", b"\xfe\xff": "UTF-16BE", b"\xff\xfe": "UTF-16LE"}
_DECLARATION_RE = re.compile(
    rb"<\?xml[ \t\r\n]+version[ \t\r\n]*=[ \t\r\n]*(['\"])[^'\"]*\1"
    rb"(?:[ \t\r\n]+encoding[ \t\r\n]*=[ \t\r\n]*(['\"])([^'\"]{0,64})\2)?")
_WHITESPACE = b" \t\r\n"


def _problem(file: str, message: str, line: int = 1, column: int = 0) -> Problem:
    return Problem(file, line, column, message)


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a byte offset in UTF-8 data, the column counted in characters."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _to_utf8(source: bytes, file: str) -> bytes:
    """The document as UTF-8 without a byte order mark; raises DescriptionError for any other encoding."""
    detected = "UTF-8"
    body = source
    for prefix, name in _SIGNATURES:
        if source.startswith(prefix):
            detected = name
            if prefix in _BOMS:
                body = source[len(prefix):]
            break
    if detected not in ALLOWED_ENCODINGS:
        raise DescriptionError([_problem(file, f"encoding {detected} is not allowed (use UTF-8 or UTF-16)")])
    if detected.startswith("UTF-16"):
        codec = "utf-16-be" if detected.endswith("BE") else "utf-16-le"
        try:
            text = body.decode(codec)
        except UnicodeDecodeError as exc:
            line = body[:exc.start].decode(codec, errors="replace").count("\n") + 1
            raise DescriptionError([_problem(file, f"invalid {detected} data at byte {exc.start}", line)]) from None
        body = text.encode("utf-8", errors="surrogatepass")
    declared = _DECLARATION_RE.match(body)
    if declared is not None and declared.group(3) is not None:
        name = declared.group(3).decode("ascii", errors="replace").strip()
        upper = name.upper()
        if upper not in ALLOWED_ENCODINGS:
            raise DescriptionError([_problem(file, f"encoding '{name}' is not allowed (use UTF-8 or UTF-16)")])
        if upper.startswith("UTF-16") != detected.startswith("UTF-16"):
            found = "UTF-16" if detected.startswith("UTF-16") else "UTF-8 (no UTF-16 byte order mark)"
            raise DescriptionError([_problem(file, f"encoding is declared as '{name}' but the document is {found}")])
    return body


def _scan_prolog(data: bytes, file: str) -> None:
    """Reject a DOCTYPE before the root element, before the parser could act on any declaration in it."""
    pos, end = 0, len(data)
    while pos < end:
        while pos < end and data[pos] in _WHITESPACE:
            pos += 1
        if data.startswith(b"<!--", pos):
            close = data.find(b"-->", pos + 4)
        elif data.startswith(b"<?", pos):
            close = data.find(b"?>", pos + 2)
        elif data[pos:pos + 9].upper() == b"<!DOCTYPE":
            line, column = _position(data, pos)
            raise DescriptionError([_problem(
                file, "DOCTYPE is not allowed (no DTDs, no entity declarations)", line, column)])
        else:
            return  # the root element (or something the parser will reject with its own message)
        if close < 0:
            return
        pos = close + 3 if data[pos + 1:pos + 2] == b"!" else close + 2


def _parser() -> etree.XMLParser:
    # a new parser per document: a parser's error_log is per instance, and parsers are not thread-safe
    return etree.XMLParser(
        encoding="utf-8", resolve_entities=False, load_dtd=False, dtd_validation=False, no_network=True,
        huge_tree=False, attribute_defaults=False, remove_comments=True, remove_pis=True, collect_ids=False,
    )


def _syntax_problems(parser: etree.XMLParser, error: etree.XMLSyntaxError, file: str,
                     limits: LimitSettings) -> list[Problem]:
    entries = [e for e in parser.error_log if e.level >= etree.ErrorLevels.ERROR] or list(parser.error_log)
    problems = []
    for entry in entries[:1]:  # the first error is the cause; later ones follow from it
        message = entry.message.strip()
        if "Excessive depth" in message:
            message = (f"elements nested deeper than {min(limits.max_xml_depth, PARSER_MAX_DEPTH)} levels "
                       "([limits] max_xml_depth)")
        elif "XML_PARSE_HUGE" in message or "too big" in message or "too long" in message:
            message = (f"text or attribute value over the limit of {limits.max_text_bytes} bytes "
                       "([limits] max_text_bytes)")
        else:
            message = f"not well-formed XML: {message}"
        problems.append(_problem(file, message, max(entry.line, 1), max(entry.column, 0)))
    if not problems:
        problems.append(_problem(file, f"not well-formed XML: {error.msg}", max(error.lineno or 1, 1)))
    return problems


def attribute_flood(root: etree._Element, limits: LimitSettings) -> tuple[int, str] | None:
    """``(line, message)`` for the first attribute cap the tree under ``root`` exceeds, else None.

    The caps are ``limits.max_attributes_per_element`` (checked element by element, in document order) and
    ``limits.max_attributes`` (all elements together). One walk over the elements, constant work per
    attribute; comments and processing instructions are skipped. The message names the element, the count
    and the setting: ``<node> has 100000 attributes, over the limit of 256 ([limits]
    max_attributes_per_element)``.
    """
    return _scan(root, limits, None)[0]


def _scan(root: etree._Element, limits: LimitSettings,
          text_limit: int | None) -> tuple[tuple[int, str] | None, list[etree._Element]]:
    """One walk over the elements: the first attribute cap broken (see attribute_flood), and the elements
    holding a text or attribute value that may be over ``text_limit`` bytes (None: sizes are not looked at).

    A string of n characters is at most 4n UTF-8 bytes: only strings over a quarter of the limit are
    suspects (measured later). This loop runs over every element of large documents: it stays flat, and it
    never asks lxml for an element's attribute values (``values()``, ``items()``: lxml looks each one up by
    name, which is quadratic in the attributes of the element: 230 s for 100,000); counting them is linear,
    and long values are found by one XPath over the whole tree.
    """
    per_element, most = limits.max_attributes_per_element, limits.max_attributes
    quarter = None if text_limit is None else text_limit // 4
    total = 0
    suspects: list[etree._Element] = []
    for el in root.iter(etree.Element):
        count = len(el.attrib)
        total += count
        if count > per_element or total > most:
            name = etree.QName(el).localname
            if count > per_element:
                message = (f"<{name}> has {count} attributes, over the limit of {per_element} "
                           "([limits] max_attributes_per_element)")
            else:
                message = (f"the document has more than {most} attributes, over the limit ([limits] "
                           f"max_attributes); the limit was passed at <{name}>")
            return (el.sourceline or 1, message), suspects
        if quarter is not None:
            text, tail = el.text, el.tail
            if (text is not None and len(text) > quarter) or (tail is not None and len(tail) > quarter):
                suspects.append(el)
    if quarter is not None:
        seen = set(suspects)
        for value in root.xpath("//@*[string-length() > $q]", q=quarter):
            owner = value.getparent()
            if owner not in seen:
                seen.add(owner)
                suspects.append(owner)
        suspects.sort(key=lambda el: el.sourceline or 0)
    return None, suspects


def _check_tree(root: etree._Element, data: bytes, file: str, limits: LimitSettings) -> list[Problem]:
    # No text can be longer than the whole document: sizes are looked at only in documents over the limit.
    flood, suspects = _scan(root, limits, limits.max_text_bytes if len(data) > limits.max_text_bytes else None)
    if flood is not None:
        return [_problem(file, flood[1], flood[0])]  # the later checks would walk the flood again
    problems: list[Problem] = []
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        problems.append(_problem(file, "DOCTYPE is not allowed (no DTDs, no entity declarations)"))
    if b"XInclude" in data:
        for ns in XINCLUDE_NAMESPACES:
            for el in root.iter(f"{{{ns}}}*"):
                problems.append(_problem(file, f"XInclude is not supported (<{etree.QName(el).localname}>)",
                                         el.sourceline or 1))
    depth = min(limits.max_xml_depth, PARSER_MAX_DEPTH)
    deep = root.xpath("(" + "/*" * (depth + 1) + ")[1]")
    if deep:
        problems.append(_problem(file, f"elements nested deeper than {depth} levels ([limits] max_xml_depth)",
                                 deep[0].sourceline or 1))
    problems.extend(_oversized_texts(suspects, file, limits.max_text_bytes))
    return problems


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def _oversized_texts(suspects: list[etree._Element], file: str, limit: int) -> list[Problem]:
    problems = []
    for el in suspects:
        name = etree.QName(el).localname
        where = f"of <{name}> is {{}} bytes, over the limit of {limit} bytes ([limits] max_text_bytes)"
        for what, text in (("text", el.text), ("text after the element", el.tail)):
            if text is not None and (size := _utf8_size(text)) > limit:
                problems.append(_problem(file, f"{what} {where.format(size)}", el.sourceline or 1))
        for key in el.keys():  # only suspects come here; no flood of attributes either
            if (size := _utf8_size(el.get(key, ""))) > limit:
                problems.append(_problem(file, f"attribute '{etree.QName(key).localname}' {where.format(size)}",
                                         el.sourceline or 1))
    return problems


def parse_document(source: bytes, limits: LimitSettings, *, filename: str = "<string>") -> etree._ElementTree:
    """Parse untrusted bytes into an lxml tree. Raises DescriptionError (every Problem has a location)."""
    if len(source) > limits.max_document_bytes:
        raise DescriptionError([_problem(
            filename, f"document is over the limit of {limits.max_document_bytes} bytes "
                      "([limits] max_document_bytes)")])
    data = _to_utf8(source, filename)
    _scan_prolog(data, filename)
    parser = _parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise DescriptionError(_syntax_problems(parser, exc, filename, limits)) from None
    problems = _check_tree(root, data, filename, limits)
    if problems:
        raise DescriptionError(problems)
    return root.getroottree()


__all__ = ["ALLOWED_ENCODINGS", "PARSER_MAX_DEPTH", "attribute_flood", "parse_document"]
