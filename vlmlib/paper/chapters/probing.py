"""Chapter 5, linear probing (paper section 2.4, Figure 3): the claim, its rule, the side-by-side curves,
and what the chapter's run needs (its samples, the probes, the tables beside the paper, the bullets)."""

from __future__ import annotations

import math

import numpy as np

from ...probing import category_pattern, load_probe_samples, names_category, probes_by_scaling
from ..claims import (
    FAILS,
    HOLDS,
    UNRESOLVED,
    Alternative,
    Claim,
    MissingField,
    compare,
    get_field,
    headline,
    reported_for,
)
from ..format import pm
from ..spec import ChapterSpec, SideBySide


def _paper_probes(family: str) -> str:
    values, note = reported_for("figure3_probing", family)
    lo, hi = values["plateau_accuracy"]
    first, last = values["spike_layers"]
    return (
        f"{note}about {values['spike_accuracy']:.0%} on the trained layers {first}-{last}, "
        f"{lo:.0%}-{hi:.0%} on the others"
    )


# Chapter 5's feature sets, in the order a verdict prefers them: the first without the category word's
# shortcut (the caption names the category, so a caption probe reads it from the input embeddings).
# How a feature set is named for a reader (pages, figure labels); the results files keep the keys.
SET_LABELS = {
    "vision_question": "image and question tokens",
    "vision": "image tokens",
    "question": "question tokens",
    "caption": "caption tokens",
    "caption_masked": "caption without the category word",
    "caption_deleted": "caption with the category word deleted",
}
SCALING_NAMES = {"per_layer": "per-state", "train_layer": "training-state"}
VISION_SETS = ("vision_question", "vision")  # image tokens with the question after them; with the caption


TEXT_SETS = ("question", "caption_masked", "caption_deleted", "caption")


def feature_sets(results: dict) -> list[tuple[str, bool]]:
    """(vision set, text set) to judge, each with whether it is free of the category-word shortcut."""
    summary = get_field(results, "summary")
    chosen = []
    for sets, confounded in ((VISION_SETS, "vision"), (TEXT_SETS, "caption")):
        name = next((k for k in sets if k in summary), None)
        if name is None:
            raise MissingField(f"results lack the feature sets {', '.join(sets)} (an older chapter 5)")
        chosen.append((name, name != confounded))
    return chosen


def late_probes(results: dict) -> dict:
    """Section 2.4: a probe trained on the last state scores best there and degrades on earlier states.

    Measure: the drop of the last-state probe from the last state to the early states (states the late
    probes were not trained on), per fold; its standard error is Nadeau and Bengio's corrected one, the
    fold s.d. x sqrt(1/k + 1/(k - 1)) for k folds (the folds share training samples, so they are not
    independent: the plain s.d. / sqrt(k) is about 1.5x too small at k = 5). Own-layer probes on the
    early states say whether a drop means "the category is absent" or "the probe does not transfer": the
    reason states it. Checked again with the other standardisation of the states (per state, or with the
    probe's training state's statistics)."""
    summary = get_field(results, "summary")
    ours, verdicts, spreads, caveats, headlines = [], [], [], [], []
    for name, clean in feature_sets(results):
        s = get_field(summary, name)
        label = SET_LABELS.get(name, name)
        folds = int(get_field(results, "params").get("folds") or 0)
        drop, drop_sd = get_field(s, "transfer_drop_mean"), get_field(s, "transfer_drop_std")
        se = drop_sd * math.sqrt(1 / folds + 1 / (folds - 1)) if folds > 1 else None
        ours.append(
            f"{label}: {get_field(s, 'transfer_on_last_mean'):.0%} on the last state, "
            f"{get_field(s, 'transfer_on_early_mean'):.0%} on early states "
            f"(drop {pm(drop, se or float('nan'), '.2f')}); "
            f"own-layer probes on early states {get_field(s, 'own_on_early_mean'):.0%}"
        )
        spreads.append(se)
        headlines.append(headline(f"{label}: last-state probe, last - early states", drop, se))
        if not clean:
            caveats.append(f"{label} carries the caption's category word")
        own_early = s.get("own_on_early_mean")
        if own_early is not None and own_early >= 0.8:
            caveats.append(
                f"{label}: probes trained on the early states read the category there at {own_early:.0%}, so "
                "it is present early and a drop measures a change of basis, not a late arrival"
            )
        if se is None:
            verdicts.append((UNRESOLVED, f"{label}: one fold, no spread"))
            continue
        verdicts.append(
            compare(
                drop,
                se,
                f"{label}: the late probe drops by {drop:.0%} on early states",
                f"{label}: the late probe scores higher on early states",
                f"{label}: drop {drop:.0%} within the noise",
            )
        )
    names = [v for v, _ in verdicts]
    verdict = FAILS if FAILS in names else UNRESOLVED if UNRESOLVED in names else HOLDS
    reason = "; ".join(r for _, r in verdicts) + "".join(f" ({c})" for c in caveats)
    known = [x for x in spreads if x is not None]
    return {
        "ours": "; ".join(ours),
        "spread": max(known) if known else None,
        "verdict": verdict,
        "reason": reason,
        "headlines": headlines,
    }


OTHER_SCALING = "with the other standardisation of the states"


def with_other_scaling(results: dict) -> dict:
    """The results with the late probes' transfer numbers of the other standardisation."""
    other = get_field(results, "probes_other_scaling")
    summary = {
        name: {**s, **{k: v for k, v in get_field(other, name).items() if k.startswith("transfer_")}}
        for name, s in get_field(results, "summary").items()
    }
    return {**results, "summary": summary}


CLAIM = Claim(
    "late-probes",
    "2.4",
    "Late probes transfer poorly",
    "Linear probes trained on the last layers score best there and degrade on earlier layers.",
    "05_probing",
    late_probes,
    _paper_probes,
    alternatives=(Alternative(OTHER_SCALING, with_other_scaling),),
    task_dependent=False,  # probes read the image's category, not the answer: comparable whatever is asked
)


def _side_by_side(results: dict) -> tuple[dict, str]:
    all_probes = get_field(results, "probes")
    name = next((k for k in VISION_SETS if k in all_probes), None)
    if name is None:
        raise MissingField(f"results lack the feature sets {', '.join(VISION_SETS)}")
    folds = int(get_field(results, "params").get("folds") or 1)
    corrected = math.sqrt(1 / folds + 1 / (folds - 1)) if folds > 1 else 0.0  # Nadeau and Bengio
    curves = {}
    for label, key in (("last-state probe", "transfer_from_last"), ("probe per state", "own_layer")):
        curve = get_field(all_probes, name, key)
        curves[label] = (np.asarray(curve["mean"], float), np.asarray(curve["std"], float) * corrected)
    return curves, f"probe accuracy ({SET_LABELS.get(name, name)}, held out)"


# ---------------------------------------------------------------- the run: samples, probes, tables, bullets


def category_counts(labels) -> dict[str, int]:
    """Samples per category, categories in sorted order."""
    return {str(c): int(k) for c, k in zip(*np.unique(labels, return_counts=True))}


def captions_naming_category(samples, categories) -> int:
    """How many samples' captions name their own category (any form of the word, `names_category`)."""
    pattern = category_pattern(categories)
    return sum(names_category(s, pattern) for s in samples)


def other_scaling(scaling: str) -> str:
    """The standardisation the probes are also evaluated with, besides `scaling`."""
    return "per_layer" if scaling == "train_layer" else "train_layer"


def fit_probes(
    features: dict, labels, train_layers, folds: int, seed: int, scaling: str
) -> tuple[dict, dict]:
    """One set of probes per feature set, fitted once and evaluated with both standardisations:
    ({name: ProbeResult with `scaling`, the controls with it}, {name: the same probes, the other scaling})."""
    other = other_scaling(scaling)
    by_scaling = {
        name: probes_by_scaling(
            features[name],
            labels,
            train_layers=train_layers,
            folds=folds,
            seed=seed,
            scalings=(scaling, other),
        )
        for name in features
    }
    return (
        {name: both[scaling] for name, both in by_scaling.items()},
        {name: both[other] for name, both in by_scaling.items()},
    )


def pct(mean, std=None) -> str:
    """An accuracy in percent, "61%", or with its spread, "61 ± 4%"."""
    return f"{100 * mean:.0f}%" if std is None else f"{100 * mean:.0f} ± {100 * std:.0f}%"


def _table_row(payload: dict, name: str) -> str:
    s = payload["summary"][name]
    own = payload["probes"][name]["own_layer"]

    def stat(key: str) -> str:  # mean ± s.d. over folds, "-" where the summary has none (no early states)
        return pct(s[f"{key}_mean"], s[f"{key}_std"]) if f"{key}_mean" in s else "-"

    drop = (
        f"{100 * s['transfer_drop_mean']:+.0f} ± {100 * s['transfer_drop_std']:.0f}"
        if "transfer_drop_mean" in s
        else "-"
    )
    cells = [
        f"`{name}`",
        pct(own["mean"][0], own["std"][0]),
        stat("own_on_early"),
        stat("transfer_on_last"),
        stat("transfer_on_early"),
        drop,
    ]
    return "| " + " | ".join(cells) + " |"


def results_table(payload: dict, paper: dict, folds: int) -> str:
    """The table beside the paper (Markdown, with its note): per feature set the own-layer probes on state
    0 and on the early states, the last-state probe on the last and on the early states, and the drop;
    the paper's row where it reports numbers for the family. `payload` is `probing_results`'."""
    summary = payload["summary"]
    early = summary[next(iter(summary))].get("early_states", [])
    span = f"states {early[0]}-{early[-1]}" if early else "none"
    table = [
        "| feature set | own-layer probe, state 0 | own-layer probe, early states | last-state probe on "
        "the last state | last-state probe on early states | drop (points) |",
        "|---|---|---|---|---|---|",
    ]
    table += [_table_row(payload, name) for name in payload["probes"]]
    if paper.get("plateau_accuracy"):
        (lo, hi), spike = paper["plateau_accuracy"], paper["spike_accuracy"]
        table.append(
            f"| paper, vision and text (PaliGemma-3B) | not reported | not reported | about "
            f"{pct(spike)} (layers 14-18) | {pct(lo)}-{pct(hi)} | about "
            f"{100 * (spike - hi):+.0f} to {100 * (spike - lo):+.0f} |"
        )
    return (
        "\n".join(table) + f"\n\nHeld-out accuracy, mean ± standard deviation across {folds} folds. "
        f"Early states: those outside the train states ({span}). Drop: the last-state probe on the last "
        "state minus on the early states, per fold."
    )


def controls_table(payload: dict, other: str) -> str:
    """The controls (Markdown): per feature set the shuffled-label control, chance and the majority class,
    and the last-state probe on the early states with the `other` standardisation."""
    ctrl = [
        "| feature set | shuffled-label control (mean over states) | chance / majority class "
        f"| last-state probe on early states, {SCALING_NAMES.get(other, other)} standardisation |",
        "|---|---|---|---|",
    ]
    for name in payload["probes"]:
        s, alt = payload["summary"][name], payload["probes_other_scaling"][name]
        ctrl.append(
            f"| `{name}` | {pct(s['control_mean'], s['control_std'])} | {pct(s['chance'])} / "
            f"{pct(s['majority'])} | "
            + (
                pct(alt["transfer_on_early_mean"], alt["transfer_on_early_std"])
                if "transfer_on_early_mean" in alt
                else "-"
            )
            + " |"
        )
    return "\n".join(ctrl)


def first_state_above(payload: dict, name: str, level: float = 0.9) -> str:
    """The first state where the own-layer probe of feature set `name` reaches `level`, in words."""
    own = np.asarray(payload["probes"][name]["own_layer"]["mean"])
    above = np.flatnonzero(own >= level)
    return f"state {above[0]}" if len(above) else f"no state (best {pct(own.max())})"


def _drop_words(payload: dict, name: str) -> str:
    s = payload["summary"][name]
    if "transfer_drop_mean" not in s:
        return f"`{name}` no early states (probes trained on every state)"
    return (
        f"`{name}` {100 * s['transfer_drop_mean']:+.0f} ± {100 * s['transfer_drop_std']:.0f} points "
        f"({pct(s['own_on_early_mean'])})"
    )


def conclusion_points(payload: dict) -> list[str]:
    """The bullets of "What this run shows" from `probing_results`' numbers: the caption's shortcut, what
    the question's tokens carry, the paper's drop per feature set, and the controls."""
    probes, summary = payload["probes"], payload["summary"]
    points = []
    if {"caption", "caption_masked"} <= set(probes):
        own0 = {n: probes[n]["own_layer"]["mean"][0] for n in ("caption", "caption_masked")}
        points.append(
            f"The caption's category word is a shortcut: a probe on the caption's tokens reads the "
            f"category at state 0, before any layer has run ({pct(own0['caption'])}); without the "
            f"word's tokens it scores {pct(own0['caption_masked'])} there (chance "
            f"{pct(summary['caption']['chance'])}), and reaches 90% at "
            f"{first_state_above(payload, 'caption_masked')}."
        )
    if "question" in probes:
        points.append(
            f"The question's tokens can carry the category only through attention to the image (when the "
            f"question names none, as the counting question does): own-layer probes reach 90% at "
            f"{first_state_above(payload, 'question')}."
        )
    points.append(
        "The paper's claim, a probe trained on the last state loses accuracy on the early states "
        "(drop, and in brackets what probes trained on those states score there): "
        + "; ".join(_drop_words(payload, n) for n in probes)
        + "."
    )
    controls = ", ".join(pct(summary[n]["control_mean"]) for n in probes)
    points.append(
        f"Shuffled-label controls stay at {controls} against a chance level of "
        f"{pct(summary[next(iter(probes))]['chance'])}: the held-out numbers do not leak."
    )
    return points


SPEC = ChapterSpec(
    "05_probing",
    claims=(CLAIM,),
    side_by_side=SideBySide(
        "lines",
        _side_by_side,
        "Vision probes (image tokens, the question after them): the probe trained on the last state, on "
        "every state (solid), and a probe trained on each state (dashed); x counts states H(0..L); bands "
        "±1 s.e. over folds.",
        ylim=(0, 1.03),
        xlabel="state H(l)",
    ),
    load_samples=load_probe_samples,  # single-category samples: the category is the probes' label
    untrained_note="These are random weights: whatever is decodable comes from the input embeddings and the "
    "random vision tower carried through the stream, not from anything the model learned.",
)
