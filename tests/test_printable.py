"""broker.printable (issue 12, section 6): user text shown with control, bidi and zero-width characters escaped,
in every place that shows it; the log record factory every command installs."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from broker.printable import UNSAFE, printable, xml_safe

UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


@pytest.mark.slow
def test_the_class_is_exactly_the_control_format_separator_and_surrogate_characters():
    wrong = [hex(cp) for cp in range(sys.maxunicode + 1)
             if (unicodedata.category(chr(cp)) in UNSAFE_CATEGORIES) != bool(UNSAFE.fullmatch(chr(cp)))]
    assert wrong == [], f"Unicode {unicodedata.unidata_version}: update broker.printable.UNSAFE"


@pytest.mark.slow
def test_xml_safe_replaces_exactly_what_the_xml_char_production_leaves_out():
    # XML 1.0: Char ::= #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
    def allowed(cp: int) -> bool:
        return cp in (0x9, 0xA, 0xD) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD or 0x10000 <= cp

    wrong = [hex(cp) for cp in range(sys.maxunicode + 1) if (xml_safe(chr(cp)) == chr(cp)) != allowed(cp)]
    assert wrong == []
    assert xml_safe("a\x00b\ufffe\ud800c\U0001f600") == "a\ufffdb\ufffd\ufffdc\U0001f600"


def test_controls_bidi_and_zero_width_characters_are_escaped_in_python_notation():
    assert printable("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert printable("\x1b[31mred\x7f\x9b") == "\\x1b[31mred\\x7f\\x9b"
    assert printable("abc\u202edcba \u2066x\u2069 zero\u200bwidth \ufeff \u2028") == (
        "abc\\u202edcba \\u2066x\\u2069 zero\\u200bwidth \\ufeff \\u2028")
    assert printable("\U000e0041 tag") == "\\U000e0041 tag"


def test_everything_else_is_left_as_it_is():
    text = "caf\xe9 \u6f22\u5b57 \u05e9\u05dc\u05d5\u05dd emoji \U0001f600 back\\slash 'quotes'"
    assert printable(text) is text


def test_kept_characters_stay():
    assert printable('{\n  "a": "x\u202e"\n}', keep="\n") == '{\n  "a": "x\\u202e"\n}'


def test_a_log_record_is_one_line_whatever_was_logged(tmp_path):
    # the logging setup every command runs, in a process of its own (it installs a global record factory)
    code = ("import logging; from broker.cli import _setup_logging; from broker.config import Settings;"
            "_setup_logging(Settings());"
            "logging.getLogger('broker.test').warning('node %s failed', 'a\\nINFO broker: all fine\\u202e\\u200b')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "WARNING broker.test: node a\\nINFO broker: all fine\\u202e\\u200b failed\n"


def test_every_fault_text_is_escaped_not_only_description_problems():
    from broker.api.faults import detail_xml, fault_for
    from broker.errors import BrokerError, NotFound

    spec = fault_for(NotFound("no node 'a\nINFO forged\u202e'"))
    assert spec.message == "no node 'a\\nINFO forged\\u202e'"
    assert fault_for(BrokerError("database\u200b gone\n")).message == "database\\u200b gone\\n"
    assert "\u202e" not in detail_xml(spec, "urn:x")
