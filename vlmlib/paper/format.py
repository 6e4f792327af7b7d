"""Numbers and Markdown for pages, written once: a mean with its spread, a signed change, a loss, table cells.

pm(0.812, 0.004, ".3f")       "0.812 ± 0.004"       a mean ± its standard error, one format for both
fixed(-0.004, sign=True)      "-4.0e-03"            fixed point unless a nonzero value would print as 0.00
mean_pm(0.31, 0.02, sign=True) "+0.31 ± 0.02"       fixed(), then ± fixed(); "–" for a missing mean
signed(-0.001)                "0.00"                a change with its sign, never "-0.00"
estimate(0.25, 0.031)          "0.25 ± 0.031"       3 significant digits (integers whole) ± 2 of the s.e.
"""

from __future__ import annotations

import math


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pm(x: float, se: float, fmt: str = ".3g") -> str:
    """A value and its standard error in one format."""
    return f"{x:{fmt}} ± {se:{fmt}}"


def fixed(x: float, digits: int = 2, sign: bool = False) -> str:
    """Fixed point, or two significant digits for a nonzero value that would print as 0.00."""
    if x != 0 and abs(x) < 0.5 * 10**-digits:
        return f"{x:+.1e}" if sign else f"{x:.1e}"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def mean_pm(mean, se=None, digits: int = 2, sign: bool = False) -> str:
    """`fixed(mean)` ± `fixed(se)`; the mean alone without a standard error, "–" without a mean."""
    if _missing(mean):
        return "–"
    text = fixed(mean, digits, sign)
    if not _missing(se):
        text += f" ± {fixed(se, digits)}"
    return text


def signed(value: float, digits: int = 2) -> str:
    """A change with its sign, "0.00" when it rounds to zero (a "-0.00" would be noise shown as a sign)."""
    if _missing(value):
        return "–"
    text = f"{value:+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def estimate(value: float, se: float | None = None) -> str:
    """Three significant digits (an integer whole), and ± two significant digits of the standard error."""
    text = f"{value:.3g}" if not float(value).is_integer() else f"{int(value)}"
    return text + (f" ± {se:.2g}" if se is not None else "")


def nats(x: float) -> str:
    """A loss as text: two decimals, or two significant digits for a saturated answer's tiny loss."""
    return f"{x:.2f}" if abs(x) >= 0.01 else f"{x:.1e}"


def cell(text) -> str:
    """Text safe inside a Markdown pipe-table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: list[str], body: list[list[str]]) -> str:
    """A Markdown pipe table. Tables stay narrow (six short columns at most) so a page never scrolls
    sideways."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
