"""Counterfactual patching beside the paper's protocol (chapters 3 and 7): where is the count carried?

The paper patches one run's layers over other layers of the same run, a protocol whose result depends on
how far apart the layers' representations are as much as on what they carry. The field's standard
protocol (Zhang and Nanda 2024; Heimersheim and Nanda 2024) asks the question directly: each image is
paired with a partner that differs in one object (`vlmlib.data.pairs`, so the two counts differ by one),
and one site of the clean run (the original image) is written into the corrupted run (the partner) at a
time. The score is the logit difference between the two answers at the final position, normalised:
recovery 0 is the corrupted run's, 1 the clean run's. A site with high recovery carries what tells the two
images apart, here the count.

Chapter 3 patches what attention adds to the residual (the site the paper patches); chapter 7 the whole
residual stream (its site). Both per decoder layer and per position class: the image tokens, the
question (every other prompt token before the final one) and the final position.
"""

from __future__ import annotations

import numpy as np

from ..data.pairs import counterfactual_pairs
from ..data.samples import DatasetError
from ..interventions.counterfactual import counterfactual_experiment
from .figures import COLUMN_WIDTH
from .format import cell, mean_pm, pm

POSITIONS = ("image", "question", "final")
POSITION_NAMES = {"image": "image tokens", "question": "question tokens", "final": "final position"}
SITE_NAMES = {"attn": "attention output", "resid": "residual stream", "mlp": "MLP output"}


def run_counterfactual(lm, samples, kind: str, n_pairs: int, batch_size: int, max_rows: int):
    """Pairs from the first `n_pairs` samples and their partners; `kind` patched at every decoder layer and
    position class. Returns (the library's CounterfactualResult, None), or (None, why not) when the run
    asks for no pairs or its dataset has no partners (photographs)."""
    if n_pairs <= 0:
        return None, "Counterfactual patching was not run (`counterfactual_pairs` = 0)."
    try:
        pairs = counterfactual_pairs(samples[:n_pairs])
    except DatasetError as error:
        return None, f"No counterfactual patching on this dataset: {error}."
    result = counterfactual_experiment(
        lm, pairs, kinds=(kind,), positions=POSITIONS, batch_size=batch_size, max_rows=max_rows
    )
    return result, None


def show_section(
    lm, samples, kind: str, n_pairs: int, batch_size: int, max_rows: int
) -> tuple[dict, list[str]]:
    """A chapter's counterfactual section: run it, draw the recovery per layer, show the table (or why
    there is none). Returns (what the results file records, the conclusion's bullets)."""
    from .figures import show
    from .page import show_markdown

    result, note = run_counterfactual(lm, samples, kind, n_pairs, batch_size, max_rows)
    if result is None:
        show_markdown(note)
        return {"note": note}, []
    rows = result.rows()
    show(
        recovery_figure(rows, kind, title=f"{lm.name}: {SITE_NAMES[kind]}"),
        "recovery",
        alt=f"Line plot over the decoder layers of the recovery when one layer's {SITE_NAMES[kind]} from the "
        "original image's run is written into its partner's run, one line per class of positions.",
        caption=f"Where the count is carried: the recovery when one decoder layer's {SITE_NAMES[kind]}, at "
        "one class of positions, is taken from the original image's run into its partner's (0: the "
        "partner's answer, 1: the original's). Bands: one paired standard error over the pairs.",
    )
    show_markdown(recovery_table(rows))
    return result.to_dict(), points(rows, kind)


def recovery_grid(rows: list[dict]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(layers, recovery means (layers, positions), their standard errors) from a result's rows."""
    layers = sorted({r["layer"] for r in rows})
    mean = np.full((len(layers), len(POSITIONS)), np.nan)
    se = np.full_like(mean, np.nan)
    for r in rows:
        i, j = layers.index(r["layer"]), POSITIONS.index(r["positions"])
        mean[i, j], se[i, j] = r["recovery"], r["recovery_se"]
    return layers, mean, se


def recovery_cell(mean: float, se: float) -> str:
    """Recovery ± s.e. for a table cell; a recovery with no spread at all (a whole-residual patch gives
    exactly 1, the last layer's image positions exactly 0) says so instead of "0.00 ± 0.00"."""
    if not np.isfinite(mean):
        return "–"
    if se == 0 and float(mean).is_integer():
        return f"{int(mean)} (exact)"
    return mean_pm(mean, se, 2)


def recovery_table(rows: list[dict]) -> str:
    """Markdown: a row per decoder layer, a column per position class, recovery ± s.e."""
    layers, mean, se = recovery_grid(rows)
    lines = [
        "| layer | " + " | ".join(POSITION_NAMES[p] for p in POSITIONS) + " |",
        "|---|" + "---|" * len(POSITIONS),
    ]
    for i, layer in enumerate(layers):
        cells = [recovery_cell(mean[i, j], se[i, j]) for j in range(len(POSITIONS))]
        lines.append(f"| {layer} | " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines)


def recovery_figure(rows: list[dict], site: str, title: str = ""):
    """Recovery per layer, one line per position class (0: the partner's answer, 1: the original's)."""
    from .figures import book_figure, finish

    layers, mean, se = recovery_grid(rows)
    fig, ax = book_figure(figsize=(COLUMN_WIDTH, 3.4))
    styles = {"image": ("-", "o"), "question": ("--", "s"), "final": (":", "^")}
    for j, position in enumerate(POSITIONS):
        line, marker = styles[position]
        ax.plot(layers, mean[:, j], ls=line, marker=marker, ms=4, label=POSITION_NAMES[position])
        ax.fill_between(layers, mean[:, j] - se[:, j], mean[:, j] + se[:, j], alpha=0.2)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8, ls=":")
    ax.set(
        xlabel="decoder layer patched (from 0)",
        ylabel="recovery",
        title=title or f"{SITE_NAMES[site]} patched",
    )
    ax.set_xticks(layers)
    ax.legend()
    return finish(fig)  # the legend where it covers no line


def carried(rows: list[dict], threshold: float = 0.5) -> dict[str, list[int]]:
    """Per position class, the layers whose patch recovers at least `threshold` of the clean logit
    difference, resolved (the mean minus two standard errors above it)."""
    layers, mean, se = recovery_grid(rows)
    return {
        p: [layers[i] for i in range(len(layers)) if mean[i, j] - 2 * se[i, j] >= threshold]
        for j, p in enumerate(POSITIONS)
    }


def points(rows: list[dict], site: str) -> list[str]:
    """Conclusion bullets: where patching the site brings the original answer back."""
    if not rows:
        return []
    n, gap, gap_se = rows[0]["n"], rows[0]["gap"], rows[0]["gap_se"]
    where = carried(rows)
    parts = []
    for p in POSITIONS:
        found = where[p]
        parts.append(
            f"at the {POSITION_NAMES[p]} in layer{'s' if len(found) > 1 else ''} {', '.join(map(str, found))}"
            if found
            else f"nowhere at the {POSITION_NAMES[p]}"
        )
    return [
        f"Counterfactual patching ({n} pairs of images whose counts differ by one; the clean and corrupted "
        f"runs' logit differences are {pm(gap, gap_se, '.2f')} apart): the {SITE_NAMES[site]} brings back at "
        "least half of the original answer's logit difference (resolved) " + "; ".join(parts) + "."
    ]
