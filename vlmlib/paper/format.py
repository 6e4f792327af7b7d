"""Numbers and Markdown for pages, written once, for a person: a mean with its spread, a change, a
percentage, a difference of percentages, a loss, a list of layers, table cells.

pm(0.812, 0.004, ".3f")          "0.812 ± 0.004"      a mean ± its standard error, one format for both
fixed(-0.0000551, sign=True)     "-0.000055"          fixed point; two significant digits where it would
                                                      print as 0.00 (never "-5.5e-05")
mean_pm(0.31, 0.02, sign=True)   "+0.31 ± 0.02"       fixed(), then ± fixed(), never broken across lines;
                                                      "–" for a missing mean
signed(-0.001)                   "0.00"               a change with its sign, never "-0.00"
estimate(0.25, 0.031)            "0.25 ± 0.031"       3 significant digits (integers whole) ± 2 of the s.e.
decimal(7.6932)                  "7.69"               significant digits as a decimal; "5.5 × 10⁻⁶" only
                                                      where a decimal would not read (below 0.00001)
percent(0.8312, 0.0031)          "83.1% ± 0.3%"       as many decimals as the spread resolves, no "± 0%"
accuracy(1.0, 0.0, n=200)        "all 200 correct"    an accuracy; "none of 200 correct", else percent()
points(-0.52)                    "-52 points"         a difference of two percentages
final_layers(1)                  "the final layer"    and "the final 3 layers"
layer_list([1, 2, 3, 5])         "layers 1-3 and 5"   never a Python list on a page
p_value(6.6e-27)                 "< 0.0001"           a p-value a reader can read
"""

from __future__ import annotations

import math

NBSP = "\u00a0"  # a space a line never breaks at: "+0.16 ± 0.17" stays on one line in a narrow cell
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def decimal(x: float, significant: int = 3, sign: bool = False) -> str:
    """`significant` digits as a decimal, like the "g" format without its exponent: "7.69", "0.000055",
    "0.5"; a number of `significant` digits or more before the point whole ("1235"); below 0.00001, where
    a decimal no longer reads, "5.5 × 10⁻⁶"."""
    if _missing(x):
        return "–"
    x = float(x)
    plus = "+" if sign and x > 0 else ""
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    if abs(x) >= 1e-5:
        text = f"{x:.{max(0, significant - 1 - exponent)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return plus + text
    mantissa = f"{x / 10**exponent:.{max(0, significant - 1)}f}".rstrip("0").rstrip(".")
    return f"{plus}{mantissa} × 10{str(exponent).translate(SUPERSCRIPT)}"


def pm(x: float, se: float, fmt: str = ".3g") -> str:
    """A value and its standard error in one format (a decimal where the format would use an exponent)."""

    def one(v):
        text = f"{v:{fmt}}"
        return decimal(v, 3) if "e" in text else text

    return f"{one(x)} ± {one(se)}"


def fixed(x: float, digits: int = 2, sign: bool = False) -> str:
    """Fixed point, or two significant digits for a nonzero value that would print as 0.00."""
    if x != 0 and abs(x) < 0.5 * 10**-digits:
        return decimal(x, 2, sign=sign)
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def mean_pm(mean, se=None, digits: int = 2, sign: bool = False) -> str:
    """`fixed(mean)` ± `fixed(se)`; the mean alone without a standard error, "–" without a mean. The parts
    are joined with no-break spaces: a table cell never breaks "+0.16 ± 0.17" across lines."""
    if _missing(mean):
        return "–"
    text = fixed(mean, digits, sign)
    if not _missing(se):
        # the spread in the mean's decimals: "-0.000047 ± 0.000011", never "-0.00004 ± 7.3 × 10⁻⁶"
        shown = len(text.split(".")[1]) if "." in text and "×" not in text else digits
        spread = f"{se:.{shown}f}" if shown > digits else fixed(se, digits)
        text += f"{NBSP}±{NBSP}{spread}"
    return text


def signed(value: float, digits: int = 2) -> str:
    """A change with its sign, "0.00" when it rounds to zero (a "-0.00" would be noise shown as a sign)."""
    if _missing(value):
        return "–"
    text = f"{value:+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def estimate(value: float, se: float | None = None) -> str:
    """Three significant digits (an integer whole), and ± two significant digits of the standard error."""
    text = decimal(value, 3)
    return text + (f" ± {decimal(se, 2)}" if se is not None else "")


def nats(x: float) -> str:
    """A loss as text: two decimals, or two significant digits for a saturated answer's tiny loss."""
    return f"{x:.2f}" if abs(x) >= 0.01 else decimal(x, 2)


def _decimals_for(spread: float | None, value: float | None = None) -> int:
    """Decimals of a percentage that its spread resolves: 0 for a spread of a point or more, 1 for a tenth
    of a point, at most 2; without a spread 0, unless the value would round to 0% or 100% without being
    it."""
    if spread is not None and not _missing(spread) and spread > 0:
        points_ = abs(spread) * 100
        return 0 if points_ >= 0.95 else 1 if points_ >= 0.095 else 2
    if value is not None and not _missing(value):
        v = abs(value) * 100
        for digits in (0, 1, 2):
            text = f"{v:.{digits}f}"
            if (float(text) != 0 or v == 0) and (float(text) != 100 or v == 100):
                return digits
        return 2
    return 0


def percent(x: float, se: float | None = None, sign: bool = False) -> str:
    """A proportion as a percentage with the digits its standard error resolves: "83% ± 4%", "83.1% ± 0.3%".
    A spread of exactly 0 is left out (never "± 0%"); "–" for a missing value."""
    if _missing(x):
        return "–"
    digits = _decimals_for(se, x)
    text = f"{x * 100:+.{digits}f}%" if sign else f"{x * 100:.{digits}f}%"
    if se is not None and not _missing(se) and se > 0:
        text += f" ± {se * 100:.{digits}f}%"
    return text


def accuracy(x: float, se: float | None = None, n: int | None = None) -> str:
    """A top-1 accuracy: "all 200 correct" and "none of 200 correct" where every or no sample is (where a
    binomial standard error is 0), else `percent`."""
    if n and not _missing(x):
        if x >= 1:
            return f"all {n} correct"
        if x <= 0:
            return f"none of {n} correct"
    return percent(x, se)


def points(difference: float, se: float | None = None, sign: bool = True) -> str:
    """A difference of two percentages in percentage points: "-52 points", "+5.2 ± 1.1 points"."""
    if _missing(difference):
        return "–"
    digits = _decimals_for(se, difference if difference else None)
    value = difference * 100
    if round(value, digits) == 0:
        text = f"{0:.{digits}f}"
    else:
        text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    if se is not None and not _missing(se) and se > 0:
        text += f" ± {se * 100:.{digits}f}"
    unit = "point" if se is None and abs(round(value, digits)) == 1 else "points"
    return f"{text} {unit}"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """ "1 layer", "3 layers": a number with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def final_layers(k: int) -> str:
    """ "the final layer", "the final 3 layers" (never "final 1 layer(s)")."""
    return "the final layer" if k == 1 else f"the final {k} layers"


def layer_list(layers, noun: str = "layer") -> str:
    """Layers as a reader writes them: "layer 3", "layers 1-3 and 5", "no layer" (never "[1, 2, 3, 5]")."""
    values = sorted({int(v) for v in layers})
    if not values:
        return f"no {noun}"
    runs, start, previous = [], values[0], values[0]
    for value in values[1:]:
        if value != previous + 1:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
            start = value
        previous = value
    runs.append(str(start) if start == previous else f"{start}-{previous}")
    plural = noun + "s"
    if len(runs) == 1:
        return f"{noun if len(values) == 1 else plural} {runs[0]}"
    return f"{plural} {', '.join(runs[:-1])} and {runs[-1]}"


def p_value(p: float) -> str:
    """A p-value: two significant digits, "< 0.0001" below that (never "6.6e-27")."""
    if _missing(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else decimal(p, 2)


def cell(text) -> str:
    """Text safe inside a Markdown pipe-table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: list[str], body: list[list[str]]) -> str:
    """A Markdown pipe table. Tables stay narrow (six short columns at most) so a page never scrolls
    sideways."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
