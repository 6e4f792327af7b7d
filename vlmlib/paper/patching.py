"""Patching as the paper reports it: measures read like the paper's, comparisons with its tables
(paired tests, Holm's correction), and the tables and figures of chapters 3 and 7."""

from __future__ import annotations

import numpy as np

from ..interventions.patching import TOWER_KINDS
from ..stats import ALPHA, CORRECTION, holm, paired_p_value
from ..util import span
from .format import count, md_table, mean_pm, nats, p_value, percent, pm

# How a row's measure reads, and how the paper's row gives the same measure (the paper reports the
# target logit and the cross-entropy loss; log p(target) = -loss).
MEASURE_LABELS = {
    "delta": "Δ logit",
    "delta_logprob": "Δ log p(target)",
    "delta_loss": "Δ loss",
    "delta_logit_diff": "Δ logit difference",
    "delta_acc": "Δ top-1 accuracy",
}
PAPER_MEASURES = {
    "delta": lambda r: r["delta"],
    "delta_logprob": lambda r: r["clean_loss"] - r["patched_loss"],
    "delta_loss": lambda r: r["patched_loss"] - r["clean_loss"],
}
# Readings of the paper's rows besides the literal one, (our kind, positions) -> (paper kind, positions):
# Appendix D.2 reads the attention tables' "Vision" rows as attention inside the vision encoder.
PAPER_READINGS = {("vision_attn", "all"): ("attn", "vision")}

# The measures in words, with their unit, for a conclusion a person reads.
MEASURE_WORDS = {
    "delta": ("the target's logit", "logits"),
    "delta_logprob": ("the target's log-probability", "nats"),
    "delta_loss": ("the target's loss", "nats"),
    "delta_logit_diff": ("the logit difference between the answers", "logits"),
    "delta_acc": ("top-1 accuracy", ""),
}
GROUP_WORDS = {"early": "early", "mid": "middle", "late": "late", "final": "final"}
POSITION_WORDS = {"vision": "the image tokens", "text": "the text tokens", "all": "every position"}


def _group_words(group: str) -> str:
    group = group.strip()
    return f"layers {group}" if group[:1].isdigit() else f"the {GROUP_WORDS.get(group, group)} layers"


def patch_words(row: dict, target: str = "") -> str:
    """A row's patch as a reader says it: "the middle layers written over the final layers, at the image
    tokens"; "... in the vision tower" for a tower row. `target`: the group written over where the row's
    label names only its source (front patching: "final")."""
    source, _, written_over = row["label"].partition("->")
    written_over = written_over or target
    if not written_over:
        return row["label"]
    said = f"{_group_words(source)} written over {_group_words(written_over)}"
    if row["kind"] in TOWER_KINDS:
        return said + " in the vision tower"
    return said + f", at {POSITION_WORDS.get(row['positions'], row['positions'])}"


def shift_words(row: dict, measure: str) -> str:
    """A row's shift with its spread and unit: "0.42 ± 0.05 nats", "12 points"."""
    what, unit = MEASURE_WORDS[measure]
    if measure == "delta_acc":
        return f"{100 * row[measure]:+.0f} ± {100 * row[measure + '_se']:.0f} points"
    return f"{pm(row[measure], row[measure + '_se'], '.2f')} {unit}"


def lead_sentences(
    rows: list[dict], comparison: list[dict], measure: str, what: str, target: str = ""
) -> list[str]:
    """The two sentences a patching chapter opens its conclusion with: the largest shift any patch gives
    the answer, against the clean run, and how many of the patches compared with the paper move the answer
    beyond the noise, and which way. `what` says what a patch writes ("one group of layers' attention
    output over another's")."""
    condition = rows[0].get("condition", "answer")  # the first condition: the answer, where it is one
    first = [r for r in rows if r.get("condition", "answer") == condition]
    biggest = max(first, key=lambda r: abs(r[measure]))
    words, _ = MEASURE_WORDS[measure]
    acc, loss = percent(first[0]["clean_acc"]), nats(first[0]["clean_loss"])
    said = [
        f"The largest change that writing {what} makes to {words} is {shift_words(biggest, measure)} "
        f"({patch_words(biggest, target)}), on answers the model gets right {acc} of the time, with a loss "
        f"of {loss} nats, before patching (the paper's targets: 15 to 20 nats)."
    ]
    summary = comparison_summary([c for c in comparison if c["condition"] == condition])
    for s in summary.values():
        said.append(
            f"Of the {count(s['rows'], 'patch', 'patches')} compared with the paper, {s['counted']} "
            f"{'moves' if s['counted'] == 1 else 'move'} the answer beyond the noise (Holm-corrected), "
            f"{s['same_sign']} of {'it' if s['counted'] == 1 else 'them'} the paper's way."
        )
    return said


def where_name(row: dict) -> str:
    """A short name of a row's site and positions: 'vision', 'text', 'tower', 'tower attn', ..."""
    if row["kind"] in TOWER_KINDS:
        return "tower" if row["kind"] == "vision" else "tower attn"
    return {"vision": "vision", "text": "text", "all": "all"}[row["positions"]]


def _patch_cell(row: dict) -> str:
    text = f"{row['label']} ({span(row['sources'])} → {span(row['targets'])})"
    return text + " *no effect*" if row.get("noop") else text


def markdown_table(rows: list[dict], condition: str = "answer", digits: int = 2) -> str:
    """One condition's shifts: Δ log p(target), Δ logit difference, Δ top-1 accuracy and Δ logit, each
    mean ± paired s.e.; 'where' is the position set (decoder) or the vision tower."""
    rows = [r for r in rows if r.get("condition", "answer") == condition]
    body = [
        [
            where_name(r),
            _patch_cell(r),
            mean_pm(r["delta_logprob"], r["delta_logprob_se"], digits, True),
            mean_pm(r["delta_logit_diff"], r["delta_logit_diff_se"], digits, True),
            mean_pm(r["delta_acc"], r["delta_acc_se"], digits, True),
            mean_pm(r["delta"], r["delta_se"], digits, True),
        ]
        for r in rows
    ]
    return md_table(["where", "patch (layers)", "Δ log p", "Δ logit diff", "Δ top-1", "Δ logit"], body)


def clean_table(rows: list[dict], digits: int = 2) -> str:
    """Per condition, the clean run's target: how it was chosen, its logit, its loss (−log p) and top-1
    accuracy (a proportion's s.e.). The clean run is the same for every patch of a condition."""
    body, seen = [], set()
    for r in rows:
        c = r.get("condition", "answer")
        if c in seen:
            continue
        seen.add(c)
        body.append(
            [
                c,
                r["target"],
                mean_pm(r["clean"], r["clean_se"], digits),
                mean_pm(r["clean_loss"], r["clean_loss_se"], digits),
                mean_pm(r["clean_acc"], r["clean_acc_se"], digits),
            ]
        )
    return md_table(["condition", "target", "clean logit", "clean loss (nats)", "clean top-1"], body)


def comparison_table(comparison: list[dict], condition: str, digits: int = 2) -> str:
    """One condition's rows compared with the paper: ours and the paper's measure, Holm-adjusted p, and
    what the row says (agrees / opposite sign / unresolved / no effect)."""
    body = []
    for c in comparison:
        if c["condition"] != condition:
            continue
        if c.get("noop"):
            verdict = "no effect (not counted)"
        elif c.get("tiny"):
            verdict = "too small to compare (not counted)"
        elif not c["counted"]:
            verdict = "unresolved"
        elif c.get("compared") == "small":
            verdict = "small, as the paper's" if c["same_sign"] else "an effect where the paper saw none"
        else:
            verdict = (
                "paper's sign" if c["same_sign"] else "opposite sign" if c["same_sign"] is False else "zero"
            )
        body.append(
            [
                c["modality"].replace(" positions", ""),
                c["patch"],
                mean_pm(c["ours"], c["ours_se"], digits, True),
                mean_pm(c["paper_delta"], None, digits, True),
                p_value(c["p_adjusted"]),
                verdict,
            ]
        )
    measure = MEASURE_LABELS.get(comparison[0]["measure"], "") if comparison else ""
    return md_table(["where", "patch", f"ours {measure}", "paper", "p (Holm)", "reads"], body)


def paper_markdown(paper: dict) -> str:
    """The paper's table as transcribed (six columns), with Δ log p(target) = clean loss − patched loss."""
    key = "direction" if "direction" in paper["rows"][0] else "layers"
    digits = paper.get("digits", 2)
    body = [
        [
            r["modality"],
            r[key],
            f"{r['clean']:.{digits}f} → {r['patched']:.{digits}f}",
            f"{r['delta']:+.{digits}f}",
            f"{r['clean_loss']:.{digits}f} → {r['patched_loss']:.{digits}f}",
            f"{PAPER_MEASURES['delta_logprob'](r):+.{digits}f}",
        ]
        for r in paper["rows"]
    ]
    return md_table(
        ["modality", key, "logit, clean → patched", "Δ logit", "loss, clean → patched", "Δ log p"], body
    )


def modality_name(row: dict) -> str:
    """How a row's site and positions read in a table: 'vision tower', 'decoder text', ..."""
    if row["kind"] == "vision":
        return "vision tower"
    if row["kind"] == "vision_attn":
        return "vision-tower attention"
    where = {"vision": "vision positions", "text": "text positions", "all": "all positions"}[row["positions"]]
    return f"{'attention' if row['kind'] == 'attn' else 'decoder'}, {where}"


def paper_row(paper: dict | None, row: dict, readings: bool = True) -> dict | None:
    """The paper's row for one of ours: same (kind, positions, patch label), or (with `readings`) the
    same label under another reading of the paper (`PAPER_READINGS`)."""
    key = (row["kind"], row["positions"])
    wanted = {key, PAPER_READINGS.get(key, key) if readings else key}
    for r in (paper or {}).get("rows", []):
        if (r["kind"], r["positions"]) in wanted and r["patch"] == row["label"]:
            return r
    return None


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


# A shift the paper calls "minimal" is compared as small: |ours| within this band (in the measure's units,
# nats for log p). The paper's minimal rows moved log p by 0.03 nats or less; its smallest effect it
# discusses (Table 1, vision early->late) by 0.3.
MINIMAL_BAND = 0.1
# A shift compared by sign must be at least this large (in the measure's units: nats or logits) to count:
# a resolved shift of 0.00002 nats (a saturated answer, a tower that barely moves it) has a sign, but not
# one that says anything about the paper's effects, the smallest of which moved log p by 0.03 nats.
SIGN_FLOOR = 0.01


def compare_with_paper(
    rows: list[dict], paper: dict | None, measure: str = "delta_logprob", alpha: float = ALPHA
) -> list[dict]:
    """Per row with a paper counterpart (every condition): the paper's value of `measure`, ours with its
    paired s.e., a two-sided paired t test of "no shift", Holm's correction over all these rows, and
    whether the row counts.

    Rows the paper treats as effects are compared by sign (`compared` "sign"): the row counts when resolved
    after correction (adjusted p < alpha) and not a no-op, and `same_sign` says whether its sign is the
    paper's (None where either sign is 0 or the row is a no-op). A shift below `SIGN_FLOOR` is `tiny` and
    never counts, however small its standard error. Rows the paper itself calls a minimal
    effect (`"effect": "minimal"` in its values) are compared as small (`compared` "small"): one agrees
    (`same_sign` True) when |ours| + 2 s.e. is inside `MINIMAL_BAND`, disagrees when it is resolved after
    correction and |ours| - 2 s.e. is outside it, and does not count otherwise: a sign of noise is never
    compared."""
    if measure not in PAPER_MEASURES:
        raise ValueError(f"the paper reports no {measure!r}; compare one of {list(PAPER_MEASURES)}")
    matched = [(r, pr) for r in rows if (pr := paper_row(paper, r)) is not None]
    p_values = [paired_p_value(r[measure], r[measure + "_se"], r["n"]) for r, _ in matched]
    adjusted = holm(p_values)
    out = []
    for (r, pr), p, p_adj in zip(matched, p_values, adjusted):
        theirs, ours = PAPER_MEASURES[measure](pr), r[measure]
        noop = bool(r.get("noop"))
        resolved = p_adj < alpha
        se = r[measure + "_se"]
        if pr.get("effect") == "minimal":
            small, large = abs(ours) + 2 * se <= MINIMAL_BAND, resolved and abs(ours) - 2 * se > MINIMAL_BAND
            same = True if small else False if large else None
            counted = (small or large) and not noop
        else:
            tiny = abs(ours) < SIGN_FLOOR
            same = None if noop or tiny or _sign(theirs) == 0 else _sign(ours) == _sign(theirs)
            counted = resolved and not noop and not tiny
        out.append(
            {
                "modality": modality_name(r),
                "patch": r["label"],
                "condition": r.get("condition", "answer"),
                "paper_delta": theirs,
                "measure": measure,
                "ours": ours,
                "ours_se": r[measure + "_se"],
                "p_value": p,
                "p_adjusted": p_adj,
                "correction": CORRECTION,
                "resolved": bool(resolved),
                "compared": "small" if pr.get("effect") == "minimal" else "sign",
                "same_sign": same,
                "counted": bool(counted),
                "noop": noop,
                "tiny": pr.get("effect") != "minimal" and abs(ours) < SIGN_FLOOR,
            }
        )
    return out


def comparison_summary(comparison: list[dict]) -> dict[str, dict]:
    """Per condition: rows compared, rows counted (resolved after correction, not no-ops), and of
    these how many have the paper's sign, with their names."""
    out: dict[str, dict] = {}
    for c in comparison:
        s = out.setdefault(
            c["condition"], {"rows": 0, "counted": 0, "same_sign": 0, "agree": [], "disagree": []}
        )
        s["rows"] += 1
        if c["counted"]:
            s["counted"] += 1
            s["same_sign"] += bool(c["same_sign"])
            s["agree" if c["same_sign"] else "disagree"].append(f"{c['modality']} {c['patch']}")
    return out


def delta_figure(
    rows: list[dict], paper: dict | None = None, title: str = "", measure: str = "delta_logprob"
):
    """`measure` per patch, one panel per condition (ours, ±1 s.e.) and one for the paper (no spread),
    stacked at the book's column width; bars grouped by where the patch writes."""
    from .figures import COLOURS, COLUMN_WIDTH, OKABE_ITO, book_figure, finish

    colours = {
        "vision": COLOURS["vision"],
        "text": COLOURS["text"],
        "all": COLOURS["all"],
        "tower": OKABE_ITO[2],
        "tower attn": OKABE_ITO[3],
    }
    conditions = list(dict.fromkeys(r.get("condition", "answer") for r in rows))
    wheres = list(dict.fromkeys(where_name(r) for r in rows))
    # x order: that of the site with the most patches (a shallow tower may lack one of the paper's groups)
    per_where = [list(dict.fromkeys(r["label"] for r in rows if where_name(r) == w)) for w in wheres]
    labels = list(dict.fromkeys([*max(per_where, key=len), *(r["label"] for r in rows)]))
    has_paper = measure in PAPER_MEASURES and paper is not None and any(paper_row(paper, r) for r in rows)
    panels = [(c, "ours") for c in conditions] + ([(conditions[0], "paper")] if has_paper else [])
    fig, axes = book_figure(len(panels), 1, squeeze=False, figsize=(COLUMN_WIDTH, 2.5 * len(panels) + 0.4))
    hatches = ("", "//", "..", "xx", "\\\\")  # the sites told apart without colour too
    width = 0.8 / len(wheres)
    x = np.arange(len(labels))
    for ax, (condition, whose) in zip(axes[:, 0], panels):
        for g, where in enumerate(wheres):
            values, errors = [], []
            for label in labels:
                row = next(
                    (
                        r
                        for r in rows
                        if r["label"] == label
                        and where_name(r) == where
                        and r.get("condition", "answer") == condition
                    ),
                    None,
                )
                pr = paper_row(paper, row, readings=False) if (row and whose == "paper") else None
                values.append(
                    (row[measure] if row else np.nan)
                    if whose == "ours"
                    else (PAPER_MEASURES[measure](pr) if pr else np.nan)
                )
                errors.append((row[measure + "_se"] if row else np.nan) if whose == "ours" else 0.0)
            ax.bar(
                x + (g - (len(wheres) - 1) / 2) * width,
                values,
                width,
                color=colours.get(where),
                yerr=errors if whose == "ours" else None,
                capsize=2,
                label=where,
                hatch=hatches[g % len(hatches)],
                edgecolor="white",
            )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, labels)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
        ax.set_title(
            f"ours, {condition} condition (± 1 s.e.){': ' + title if title else ''}"
            if whose == "ours"
            else f"paper, {paper.get('model', '').split(' (')[0]} (no spread reported)"
        )
        ax.legend(ncols=len(wheres))
    return finish(fig)  # each legend where it covers no bar


# How the side-by-side page names a row's measure.
MEASURE_NAMES = {
    "delta": "Δ logit of the target",
    "delta_logprob": "Δ log p(target)",
    "delta_logit_diff": "Δ (target logit − best other)",
    "delta_acc": "Δ top-1 accuracy",
}


# A site's kind in words, for labels a reader sees.
SITE_WORDS = {"attn": "attention", "vision_attn": "tower attention", "resid": "residual", "mlp": "MLP"}


def patch_bars(results: dict) -> tuple[dict[str, tuple[float, float]], str]:
    """Rows of a patching chapter by label, for the side-by-side bars: the chapter's verdict measure (Δ logit
    for older files), the paper-like condition when the chapter ran one; and the bars' y label."""
    rows = results.get("rows") or []
    measure = results.get("verdict_measure") or "delta"
    condition = "low-rank" if any(r.get("condition") == "low-rank" for r in rows) else "answer"
    out = {}
    for r in rows:
        if r.get("condition", "answer") != condition or r.get(measure) is None:
            continue
        site = SITE_WORDS.get(r["kind"], r["kind"])
        where = "vision tower" if r["kind"] == "vision" else f"{site}, {r['positions']} positions"
        patch = r["label"].replace("->", " → ")
        out[f"{where}: {patch}"] = (r[measure], r.get(f"{measure}_se") or 0.0)
    return out, f"{MEASURE_NAMES.get(measure, measure)} ({condition})"
