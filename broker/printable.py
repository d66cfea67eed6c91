"""Text as the broker shows it: user text can never forge a line of output, reorder it or hide in it.

Ids, names, values and payload messages reach command output, log lines and SOAP fault texts inside the
broker's messages. Written raw, a newline in an id printed a forged ``valid`` line, and a right-to-left
override (U+202E) or a zero-width space reached the terminal. :func:`printable` is the one function every
place that shows such text goes through (``Problem.__str__``, the command-line output helpers, the log
record factory, the fault mapping): it escapes every control character (C0, DEL, C1: ``\\n``, ``\\t``,
``\\x1b``...), every format character (bidi embeddings, overrides and isolates, zero-width spaces and
joiners, the byte order mark...), the line and paragraph separators and lone surrogates, in Python's
notation (``\\u202e``). Everything else, accented letters and CJK included, is left as it is. Backslashes
are not doubled: the broker's own messages quote patterns that contain them.

Stored values and event bodies keep the raw text; only what is shown is escaped.
"""

from __future__ import annotations

import logging
import re

#: Unicode (14.0) categories Cc, Cf, Zl, Zp and Cs; tests/test_printable.py checks this class against
#: unicodedata, so a Python with a newer Unicode database shows what a new version adds
UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, keep: str = "") -> str:
    """``text`` with control, format and separator characters escaped (``\\n``, ``\\u202e``); the characters
    in ``keep`` stay (a multi-line document's own newlines: ``keep="\\n"``)."""
    if UNSAFE.search(text) is None:  # the usual case: nothing to copy
        return text
    if not keep:
        return UNSAFE.sub(_escape, text)
    return UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)


class PrintableLogRecord(logging.LogRecord):
    """A log record whose message shows user text escaped: one record, one line, whatever was logged.

    Installed with :func:`logging.setLogRecordFactory` by every command (so it holds for any formatter a
    logging configuration file chooses). A traceback, written after the message by the formatter, keeps
    its lines.
    """

    def getMessage(self) -> str:
        return printable(super().getMessage())


#: characters XML 1.0 cannot carry at all (not even escaped): what its Char production leaves out, listed
#: rather than as the complement of the allowed ranges, which took 4 ms to compile at every command's start
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot carry replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


__all__ = ["UNSAFE", "PrintableLogRecord", "printable", "xml_safe"]
