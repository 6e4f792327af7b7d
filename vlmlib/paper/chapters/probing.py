"""Chapter 5, linear probing (paper section 2.4, Figure 3): the claim, its rule, the side-by-side curves."""

from __future__ import annotations

import math

import numpy as np

from ..claims import (FAILS, HOLDS, NOT_COMPARABLE, SATURATED_LOSS, UNRESOLVED, Z, Claim, MissingField, compare,
                      final_count, get_field, headline, layers_phrase, mean_with_bound, paper_condition, paper_words,
                      patching_rows, pm, reported_for, saturated, series, table_ranges)
from ..spec import ChapterSpec, SideBySide


def _paper_probes(family: str) -> str:
    values, note = reported_for("figure3_probing", family)
    lo, hi = values["plateau_accuracy"]
    first, last = values["spike_layers"]
    return (f"{note}about {values['spike_accuracy']:.0%} on the trained layers {first}-{last}, "
            f"{lo:.0%}-{hi:.0%} on the others")


# Chapter 5's feature sets, in the order a verdict prefers them: the first without the category word's
# shortcut (the caption names the category, so a caption probe reads it from the input embeddings).
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
    probes were not trained on), per fold; its s.e. is the fold s.d. / sqrt(folds). Own-layer probes on the
    early states say whether a drop means "the category is absent" or "the probe does not transfer"."""
    summary = get_field(results, "summary")
    ours, verdicts, spreads, caveats, headlines = [], [], [], [], []
    for name, clean in feature_sets(results):
        s = get_field(summary, name)
        folds = int(get_field(results, "params").get("folds") or 0)
        drop, drop_sd = get_field(s, "transfer_drop_mean"), get_field(s, "transfer_drop_std")
        se = drop_sd / math.sqrt(folds) if folds > 1 else None
        ours.append(f"{name}: {get_field(s, 'transfer_on_last_mean'):.0%} on the last state, "
                    f"{get_field(s, 'transfer_on_early_mean'):.0%} on early states (drop {pm(drop, se or float('nan'), '.2f')}); "
                    f"own-layer probes on early states {get_field(s, 'own_on_early_mean'):.0%}")
        spreads.append(se)
        headlines.append(headline(f"{name}: last-state probe, last - early states", drop, se))
        if not clean:
            caveats.append(f"{name} carries the caption's category word")
        if se is None:
            verdicts.append((UNRESOLVED, f"{name}: one fold, no spread"))
            continue
        verdicts.append(compare(drop, se, f"{name}: the late probe drops by {drop:.0%} on early states",
                                 f"{name}: the late probe scores higher on early states",
                                 f"{name}: drop {drop:.0%} within the noise"))
    names = [v for v, _ in verdicts]
    verdict = FAILS if FAILS in names else UNRESOLVED if UNRESOLVED in names else HOLDS
    reason = "; ".join(r for _, r in verdicts) + "".join(f" ({c})" for c in caveats)
    known = [x for x in spreads if x is not None]
    return {"ours": "; ".join(ours), "spread": max(known) if known else None, "verdict": verdict, "reason": reason,
            "headlines": headlines}


CLAIM = Claim("late-probes", "2.4", "Late probes transfer poorly",
          "Linear probes trained on the last layers score best there and degrade on earlier layers.",
          "05_probing", late_probes, _paper_probes)


def _side_by_side(results: dict) -> tuple[dict, str]:
    all_probes = get_field(results, "probes")
    name = next((k for k in VISION_SETS if k in all_probes), None)
    if name is None:
        raise MissingField(f"results lack the feature sets {', '.join(VISION_SETS)}")
    folds = max(1, int(get_field(results, "params").get("folds") or 1))
    curves = {}
    for label, key in (("last-state probe", "transfer_from_last"), ("probe per state", "own_layer")):
        curve = get_field(all_probes, name, key)
        curves[label] = (np.asarray(curve["mean"], float), np.asarray(curve["std"], float) / np.sqrt(folds))
    return curves, f"probe accuracy ({name}, held out)"


SPEC = ChapterSpec(
    "05_probing",
    claims=(CLAIM,),
    side_by_side=SideBySide(
        "lines", _side_by_side,
        "Vision probes (image tokens, the question after them): the probe trained on the last state, on "
        "every state (solid), and a probe trained on each state (dashed); x counts states H(0..L); bands "
        "±1 s.e. over folds.", ylim=(0, 1.03), xlabel="state H(l)"),
)
