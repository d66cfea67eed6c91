"""Durations, sizes and decimal ranges."""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker.description import units
from broker.description.units import (
    format_decimal, parse_decimal, parse_duration, parse_size, range_count, range_values,
)


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("90s", 90.0), ("15min", 900.0), ("1.5h", 5400.0), ("2d", 172800.0), ("0s", 0.0),
    ("0.001s", 0.001), ("10min", 600.0), (" 3s ", 3.0),
])
def test_durations_are_float_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "1.5", "1m", "-1s", "1e3s", "s", "1.1234567s", "1 s", ""])
def test_a_duration_without_a_known_unit_is_refused(text):
    with pytest.raises(ValueError, match="is not a duration such as 500ms, 90s, 15min, 1.5h or 2d"):
        parse_duration(text)


@pytest.mark.parametrize("text, size", [
    ("0B", 0), ("1B", 1), ("500MB", 500_000_000), ("4GiB", 4 * 1024**3), ("2kB", 2000), ("3KiB", 3072),
    ("1TB", 10**12), ("1TiB", 1024**4), ("7MiB", 7 * 1024**2), ("1GB", 10**9),
])
def test_sizes_are_integer_bytes_si_powers_of_1000_iec_powers_of_1024(text, size):
    assert parse_size(text) == size
    assert isinstance(parse_size(text), int)


@pytest.mark.parametrize("text", ["4G", "1.5GiB", "10", "KB", "1kb", "-1B", ""])
def test_a_size_without_a_known_unit_is_refused(text):
    with pytest.raises(ValueError, match="is not a size such as 512MiB, 4GiB or 500MB"):
        parse_size(text)


@pytest.mark.parametrize("value, text", [
    ("1", "1"), ("1.0", "1"), ("1.50", "1.5"), ("100", "100"), ("1E+2", "100"), ("-0", "0"), ("0.000", "0"),
    ("-2.250", "-2.25"), ("0.1", "0.1"), ("123456789012345678", "123456789012345678"),
])
def test_decimals_are_written_without_exponent_or_trailing_zeros(value, text):
    assert format_decimal(Decimal(value)) == text


def D(text: str) -> Decimal:
    return parse_decimal(text)


def test_a_range_includes_to_when_it_is_reached_exactly():
    assert range_values(D("1"), D("2"), D("0.5"), max_values=10) == ("1", "1.5", "2")
    assert range_values(D("1"), D("3"), D("1"), max_values=10) == ("1", "2", "3")


def test_a_range_stops_before_to_when_the_step_jumps_over_it():
    assert range_values(D("0"), D("1"), D("0.3"), max_values=10) == ("0", "0.3", "0.6", "0.9")


def test_decimal_arithmetic_has_no_float_noise():
    values = range_values(D("0"), D("1"), D("0.1"), max_values=20)
    assert values == ("0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1")


def test_a_negative_step_counts_down():
    assert range_values(D("1"), D("-1"), D("-0.5"), max_values=10) == ("1", "0.5", "0", "-0.5", "-1")


def test_a_range_from_a_value_to_itself_has_one_value():
    assert range_values(D("2.5"), D("2.5"), D("-3"), max_values=10) == ("2.5",)


def test_a_zero_step_is_refused():
    with pytest.raises(ValueError, match="^step must not be 0$"):
        range_count(D("1"), D("2"), D("0"))


@pytest.mark.parametrize("start, stop, step, message", [
    ("1", "10", "-1", "step -1 never reaches 10 from 1 (the step must go up)"),
    ("10", "1", "1", "step 1 never reaches 1 from 10 (the step must go down)"),
])
def test_a_step_pointing_away_from_to_is_refused(start, stop, step, message):
    with pytest.raises(ValueError) as caught:
        range_count(D(start), D(stop), D(step))
    assert str(caught.value) == message


def test_the_value_count_is_checked_before_any_value_is_made(monkeypatch):
    made: list[Decimal] = []
    monkeypatch.setattr(units, "format_decimal", lambda value: made.append(value) or format_decimal(value))
    with pytest.raises(ValueError) as caught:
        range_values(D("0"), D("999999999999999999"), D("0.000000000000000001"), max_values=200_000)
    assert str(caught.value) == ("999999999999999999000000000000000001 values, over the limit of 200000 "
                                 "([limits] max_values)")
    assert made == []  # not one value was made (a count of operations, not a wall-clock bound)
    assert range_values(D("0"), D("1"), D("0.5"), max_values=3) == ("0", "0.5", "1") and len(made) == 3


def test_a_range_of_exactly_max_values_is_accepted():
    assert len(range_values(D("1"), D("5"), D("1"), max_values=5)) == 5
    with pytest.raises(ValueError):
        range_values(D("1"), D("6"), D("1"), max_values=5)


@pytest.mark.parametrize("text", ["x", "NaN", "Infinity", "1..2"])
def test_decimals_must_be_finite_numbers(text):
    with pytest.raises(ValueError):
        parse_decimal(text)
