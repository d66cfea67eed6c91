"""Numbers with units in descriptions: durations, sizes and decimal ranges.

Durations and sizes always carry an explicit unit (the XSD enforces the lexical form; these functions parse
it). Ranges use decimal arithmetic so that ``from="0" to="1" step="0.1"`` yields exactly eleven values
written ``0, 0.1, ... 1``, never ``0.30000000000000004``.
"""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, Context, Decimal, InvalidOperation

#: seconds per duration unit
DURATION_UNITS: dict[str, Decimal] = {
    "ms": Decimal("0.001"), "s": Decimal(1), "min": Decimal(60), "h": Decimal(3600), "d": Decimal(86400),
}
#: bytes per size unit: SI units are powers of 1000, IEC units powers of 1024
SIZE_UNITS: dict[str, int] = {
    "B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}

_DURATION_RE = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)(ms|s|min|h|d)")
_SIZE_RE = re.compile(r"([0-9]{1,12})(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)")
# Range inputs have at most 18 digits (the XSD's totalDigits), so 100 digits of precision make every
# quotient below exact enough that flooring it never rounds across an integer.
_CONTEXT = Context(prec=100)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``500ms``, ``90s``, ``15min``, ``1.5h`` or ``2d``. Raises ValueError."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a duration such as 500ms, 90s, 15min, 1.5h or 2d")
    return float(Decimal(match.group(1)) * DURATION_UNITS[match.group(2)])


def parse_size(text: str) -> int:
    """Bytes in a size such as ``500MB`` (10^6) or ``4GiB`` (2^30). Raises ValueError."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a size such as 512MiB, 4GiB or 500MB")
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def format_decimal(value: Decimal) -> str:
    """A decimal written without exponent, trailing zeros or negative zero: ``1``, ``1.5``, ``-0.25``."""
    if value.is_zero():
        return "0"
    return format(value.normalize(_CONTEXT), "f")


def parse_decimal(text: str) -> Decimal:
    """A finite decimal from its text. Raises ValueError."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"'{text}' is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"'{text}' is not a finite decimal number")
    return value


def range_count(start: Decimal, stop: Decimal, step: Decimal) -> int:
    """How many values ``start, start + step, ...`` reach up to ``stop`` (inclusive when hit exactly).

    Raises ValueError when ``step`` is zero or points away from ``stop``.
    """
    if step.is_zero():
        raise ValueError("step must not be 0")
    span = _CONTEXT.subtract(stop, start)
    if span.is_zero():
        return 1
    if (span > 0) != (step > 0):
        direction = "up" if span > 0 else "down"
        raise ValueError(f"step {format_decimal(step)} never reaches {format_decimal(stop)} from "
                         f"{format_decimal(start)} (the step must go {direction})")
    quotient = _CONTEXT.divide(span, step)
    return int(quotient.to_integral_value(rounding=ROUND_FLOOR)) + 1


def range_values(start: Decimal, stop: Decimal, step: Decimal, *, max_values: int) -> tuple[str, ...]:
    """The texts of a decimal range, ``stop`` included when reached exactly.

    The count is checked against ``max_values`` before any value is made; raises ValueError for a bad
    range and for one with too many values.
    """
    count = range_count(start, stop, step)
    if count > max_values:
        raise ValueError(f"{count} values, over the limit of {max_values} ([limits] max_values)")
    # start + i * step rather than repeated addition: no accumulated error, each value exact
    return tuple(format_decimal(_CONTEXT.add(start, _CONTEXT.multiply(step, Decimal(i)))) for i in range(count))


__all__ = [
    "DURATION_UNITS", "SIZE_UNITS", "format_decimal", "parse_decimal", "parse_duration", "parse_size",
    "range_count", "range_values",
]
