"""Knockouts as the book shows them: the sweep's table and its panels (chapter 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..interventions.knockout import QUERY_SETS, KnockoutResult
from ..util import span


def signed(value: float, digits: int = 2) -> str:
    """A change with its sign, "0.00" when it rounds to zero (a "-0.00" would be noise shown as a sign)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text


def rows_table(rows: Sequence[dict], digits: int = 2) -> str:
    """Markdown table of knockout rows: accuracy and deltas, mean ± paired s.e."""

    def fmt(mean, se):
        text = signed(mean, digits)
        return text + (f" ± {se:.{digits}f}" if se == se and text != "–" else "")

    head = [
        "queries",
        "blocked layers",
        "top-1 (clean → knocked)",
        "Δ top-1",
        "Δ log p(answer)",
        "Δ logit diff",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["queries"],
                    span(r["layers"]),
                    f"{r['clean_acc']:.0%} → {r['knocked_acc']:.0%}",
                    fmt(r["delta_acc"], r["delta_acc_se"]),
                    fmt(r["delta_logprob"], r["delta_logprob_se"]),
                    fmt(r["delta_logit_diff"], r["delta_logit_diff_se"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


QUERY_COLOURS = {"final": "#D55E00", "text": "#0072B2"}  # Okabe-Ito vermillion, blue
QUERY_NAMES = {"final": "from the final position", "text": "from all text positions"}


def sweep_axes(
    ax, result: KnockoutResult, scheme: str, measure: str = "delta_logprob", ylabel: str | None = None
):
    """One panel: `measure` ± 1 paired s.e. per knockout of `scheme`, a line per query set, x = first
    blocked layer (a window or an onwards run is drawn at its first layer)."""
    from .figures import integer_ticks, line_style

    for k, queries in enumerate(QUERY_SETS):
        rows = result.select(queries, scheme)
        if not rows:
            continue
        x = np.array([r["layers"][0] for r in rows])
        y = np.array([r[measure] for r in rows])
        se = np.array([r.get(measure + "_se", np.nan) for r in rows])
        ax.errorbar(
            x,
            y,
            yerr=np.nan_to_num(se),
            ms=4,
            capsize=2,
            lw=1.4,
            color=QUERY_COLOURS[queries],
            label=QUERY_NAMES[queries],
            **line_style(k),  # solid and dashed, circles and squares: told apart without colour
        )
    ax.axhline(0, color="0.4", lw=0.7)
    ax.set_xlim(-0.5, _num_layers(result) - 0.5)
    integer_ticks(ax)  # whole layers, as many as the panel's width holds
    ax.set_ylabel(measure if ylabel is None else ylabel)


def _num_layers(result: KnockoutResult) -> int:
    return max(layer for ko in result.knockouts for layer in ko.layers) + 1 if result.knockouts else 0


__all__ = ["QUERY_COLOURS", "QUERY_NAMES", "rows_table", "signed", "sweep_axes"]
