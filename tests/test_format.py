"""Numbers as a person writes them (`vlmlib.paper.format`): meaningful digits, points for differences of
percentages, no "± 0%", no exponent where a decimal reads, no "layer(s)", no Python list."""

from __future__ import annotations

import math

import pytest

from vlmlib.paper import format as fmt


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (7.6932, 3, "7.69"),  # was "7.69e+00" in a .2e format
        (-5.5e-05, 2, "-0.000055"),  # was "-5.5e-05"
        (0.5, 2, "0.5"),
        (1234.5, 3, "1234"),  # never "1.23e+03"
        (12.0, 3, "12"),
        (5.5e-07, 2, "5.5 × 10⁻⁷"),  # only where a decimal no longer reads
        (0.0, 3, "0"),
    ],
)
def test_decimal_reads_without_an_exponent(value, digits, expected):
    assert fmt.decimal(value, digits) == expected


def test_no_number_helper_writes_exponent_notation():
    for text in (
        fmt.pm(1234.5, 5.2),
        fmt.pm(0.0000123, 0.000002),
        fmt.fixed(-0.0000551, sign=True),
        fmt.estimate(12345.6, 0.0021),
        fmt.nats(0.00023),
    ):
        assert "e+" not in text and "e-" not in text, text
    assert fmt.fixed(-0.0000551, sign=True) == "-0.000055"
    assert fmt.nats(0.00023) == "0.00023" and fmt.nats(1.234) == "1.23"
    assert fmt.estimate(0.25, 0.031) == "0.25 ± 0.031"


def test_percentages_carry_the_digits_their_spread_resolves():
    assert fmt.percent(0.83, 0.041) == "83% ± 4%"
    assert fmt.percent(0.8312, 0.0031) == "83.1% ± 0.3%"  # not "83% ± 0%"
    assert fmt.percent(0.81, 0.0) == "81%"  # a spread of exactly 0 is left out
    assert fmt.percent(0.997) == "99.7%" and fmt.percent(0.0004) == "0.04%"  # not "100%" or "0%"
    assert fmt.percent(1.0) == "100%" and fmt.percent(float("nan")) == "–"
    for value, se in ((0.5, 0.0004), (0.81, 0.003), (0.2, 0.00001)):
        assert "± 0%" not in fmt.percent(value, se)


def test_accuracies_say_all_or_none_instead_of_a_zero_spread():
    assert fmt.accuracy(1.0, 0.0, n=200) == "all 200 correct"
    assert fmt.accuracy(0.0, 0.0, n=32) == "none of 32 correct"
    assert fmt.accuracy(0.83, 0.02, n=200) == "83% ± 2%"


def test_differences_of_percentages_are_points():
    assert fmt.points(-0.52) == "-52 points"  # "drops by 52%" would be a relative change
    assert fmt.points(0.052, 0.011) == "+5 ± 1 points"
    assert fmt.points(0.01) == "+1 point" and fmt.points(0.0) == "0 points"


def test_counts_and_layers_in_words():
    assert fmt.final_layers(1) == "the final layer" and fmt.final_layers(3) == "the final 3 layers"
    assert fmt.count(1, "layer") == "1 layer" and fmt.count(2, "sample") == "2 samples"
    assert fmt.layer_list([1, 2, 3, 5]) == "layers 1-3 and 5"
    assert fmt.layer_list([4]) == "layer 4" and fmt.layer_list([]) == "no layer"
    assert fmt.layer_list([0, 2, 4]) == "layers 0, 2 and 4"
    assert "[" not in fmt.layer_list([7, 1])


def test_a_mean_and_its_spread_stay_on_one_line():
    text = fmt.mean_pm(0.16, 0.17, sign=True)
    assert text == "+0.16\u00a0±\u00a00.17" and " " not in text
    assert fmt.mean_pm(math.nan) == "–"


def test_a_tiny_mean_and_its_spread_share_one_notation():
    assert fmt.mean_pm(-0.000047, 0.000011, sign=True) == "-0.000047\u00a0±\u00a00.000011"
    assert "×" not in fmt.mean_pm(-0.00004, 7.3e-6, sign=True)
