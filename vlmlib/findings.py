"""What holds: one explicit rule per claim of the paper, applied to a chapter's results dict.

Every rule reads the results file a chapter wrote (``write_results``) and returns a finding::

    {claim_id, claim, section, chapter, family, paper, ours, spread, verdict, reason, anchor, headlines}

``headlines`` are the claim's numbers as numbers, ``[{label, value, se}]`` (``se`` None where the
statistic has none), so that runs can be compared: the training-seed replicates (`vlmlib.seeds`) report
each headline's spread across seeds beside its standard error across samples.

``verdict`` is one of VERDICTS:

- "holds": the organism shows the paper's pattern, resolved by the rule below;
- "does not hold": the organism shows the opposite pattern, resolved;
- "not comparable on these models": the organisms cannot answer the question (too few layers, a
  saturated answer where the paper's target sat at 15-20 nats of loss, no paper table for the family);
- "unresolved": the difference is inside the noise, the evidence is mixed, or the results file lacks the
  fields the rule needs (then the reason names them).

The rules, shared by all claims:

- A difference counts when |estimate| > Z standard errors (Z = 2). Where a quantity is a mean of
  several per-layer means, its standard error is bounded from above by the mean of their standard
  errors (the standard deviation of a sum is at most the sum of the standard deviations, whatever the
  correlation between layers), and the standard error of a difference by the sum of the two: the
  rules are conservative, never optimistic.
- Patching comparisons (chapters 3 and 7) use the chapter's own regime-robust measure
  (``verdict_measure``) and, for chapter 3, its Holm-corrected comparison (``comparison[*].counted``).
- "Most layers" means more than half of them; "the final layers" are the last round(3 L / 18) layers
  (the paper's last three of 18, scaled to the depth L).

The paper's numbers come from vlmlib/paper_values/*.json; none is typed here. Where the paper reports a
claim for PaliGemma-3B only, the same rule is applied to every family and the paper column says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vlmlib.report import paper_values

HOLDS, FAILS, NOT_COMPARABLE, UNRESOLVED = "holds", "does not hold", "not comparable on these models", "unresolved"
VERDICTS = (HOLDS, FAILS, NOT_COMPARABLE, UNRESOLVED)
Z = 2.0  # a difference counts when it exceeds Z standard errors
SATURATED_LOSS = 0.01  # nats: a clean answer this certain cannot move up; the paper's sat at 15-20 nats
FAMILY_NAMES = {"paligemma": "PaliGemma-3B", "qwen2vl": "Qwen2-VL-2B"}
CONCLUSION = "what-this-run-shows"  # the heading every chapter ends with (anchor of its section)


class MissingField(Exception):
    """The results file lacks something a rule needs (an older chapter, or a partial run)."""


@dataclass(frozen=True)
class Claim:
    claim_id: str
    section: str  # the paper's section, as a reader finds it
    title: str  # a short name for headings
    claim: str  # the paper's claim, in one sentence
    chapter: str  # the chapter whose results file the rule reads
    rule: Callable[[dict], dict]  # results -> {ours, spread, verdict, reason}
    paper: Callable[[str], str]  # family -> the paper's number or words for this claim
    anchor: str = CONCLUSION


# ---------------------------------------------------------------- small helpers

def _get(results: dict, *path):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise MissingField("results lack " + ".".join(str(p) for p in path))
        value = value[key]
    return value


def _series(results: dict, *path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sem) arrays of a per-layer summary {mean, sem, ...}; NaN where a value is null."""
    summary = _get(results, *path)
    mean = np.array([np.nan if v is None else v for v in _get(summary, "mean")], dtype=float)
    raw_sem = summary.get("sem")  # lists in a results file, arrays when a chapter passes its live dict
    sem = np.array([np.nan] * len(mean) if raw_sem is None else [np.nan if v is None else v for v in raw_sem],
                   dtype=float)
    if mean.size == 0 or np.isnan(mean).all():
        raise MissingField("results hold no values for " + ".".join(path))
    return mean, np.nan_to_num(sem, nan=0.0)


def _mean_with_bound(mean: np.ndarray, sem: np.ndarray) -> tuple[float, float]:
    """Mean of per-layer means and the conservative bound on its standard error (mean of the s.e.)."""
    return float(np.mean(mean)), float(np.mean(sem))


def final_count(depth: int) -> int:
    """How many layers are 'the final layers': the paper's last 3 of 18, scaled to the depth."""
    return max(1, round(3 * depth / 18))


def _family_paper(name: str, family: str) -> dict:
    return paper_values(name).get(family) or {}


def _reported_for(name: str, family: str) -> tuple[dict, str]:
    """The paper's values for this family, else PaliGemma's with a note (the claim is tested on every family)."""
    own = _family_paper(name, family)
    if own and "not shown" not in own.get("words", ""):
        return own, ""
    return _family_paper(name, "paligemma"), "PaliGemma-3B only: "


def _compare(diff: float, se: float, yes: str, no: str, noise: str) -> tuple[str, str]:
    """Verdict of a signed difference whose positive sign is the paper's pattern."""
    if diff > Z * se:
        return HOLDS, yes
    if diff < -Z * se:
        return FAILS, no
    return UNRESOLVED, noise


def _span(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def _pm(x: float, se: float, fmt: str = ".3g") -> str:
    return f"{x:{fmt}} ± {se:{fmt}}"


def _headline(label: str, value, se=None) -> dict:
    """One headline number of a claim (see the module docstring)."""
    return {"label": label, "value": None if value is None else float(value),
            "se": None if se is None or not math.isfinite(float(se)) else float(se)}


# ---------------------------------------------------------------- the paper's side, from paper_values

def _paper_words(name: str) -> Callable[[str], str]:
    def text(family: str) -> str:
        values, note = _reported_for(name, family)
        return note + (values.get("words") or "not reported")
    return text


def _paper_attention_share(family: str) -> str:
    values, note = _reported_for("appendix_b_contributions", family)
    parts = []
    for modality in ("vision", "text"):
        p = values.get(modality, {})
        if "attn_share_most_layers" in p:
            lo, hi = p["attn_share_most_layers"]
            parts.append(f"{modality} {lo:.0%}-{hi:.0%} in most layers")
        elif "attn_share_until_late_layers" in p:
            lo, hi = p["attn_share_until_late_layers"]
            parts.append(f"{modality} {lo:.0%}-{hi:.0%} until the late layers")
        elif p.get("words"):
            parts.append(f"{modality}: {p['words']}")
    return note + "attention share: " + "; ".join(parts)


def _paper_probes(family: str) -> str:
    values, note = _reported_for("figure3_probing", family)
    lo, hi = values["plateau_accuracy"]
    first, last = values["spike_layers"]
    return (f"{note}about {values['spike_accuracy']:.0%} on the trained layers {first}-{last}, "
            f"{lo:.0%}-{hi:.0%} on the others")


def _table_ranges(table: dict) -> str:
    by = {}
    for r in table["rows"]:
        by.setdefault(r["modality"], []).append(r["delta"])
    return "; ".join(f"{m} Δ logit {min(v):+.2f} to {max(v):+.2f}" for m, v in by.items())


def _paper_attention_patching(family: str) -> str:
    if family not in ATTENTION_TABLES:
        return "no table for this family"
    table = paper_values(ATTENTION_TABLES[family])
    return f"{table['source'].split(':')[0]}: {_table_ranges(table)}"


def _paper_front(family: str) -> str:
    if family not in FRONT_TABLES:
        return "no table for this family"
    table = paper_values(FRONT_TABLES[family])
    mean = {m: np.mean([abs(r["delta"]) for r in table["rows"] if r["modality"] == m]) for m in ("Text", "Vision")}
    return f"{table['source'].split(':')[0]}: mean |Δ logit| text {mean['Text']:.2f}, vision tower {mean['Vision']:.2f}"


ATTENTION_TABLES = {"paligemma": "table1_paligemma_attention_patching", "qwen2vl": "table2_qwen2vl_attention_patching"}
FRONT_TABLES = {"paligemma": "table3_paligemma_front_patching", "qwen2vl": "table4_qwen2vl_front_patching"}


# ---------------------------------------------------------------- the rules

def similarity_drop(results: dict) -> dict:
    """Section 2.1: vision tokens' consecutive-layer similarity is lower in the late layers than before."""
    mean, sem = _series(results, "avg_sim", "vision")
    depth = len(mean)
    if depth < 3:
        return {"ours": f"{depth} layers", "spread": None, "verdict": NOT_COMPARABLE,
                "reason": f"{depth} decoder layers leave no early and late part to compare"}
    split = max(1, min(depth - 1, round(10 * depth / 18)))  # the paper's boundary after layer 10 of 18
    early, early_se = _mean_with_bound(mean[:split], sem[:split])
    late, late_se = _mean_with_bound(mean[split:], sem[split:])
    se = early_se + late_se
    verdict, reason = _compare(
        early - late, se,
        f"late {_span(split, depth - 1)} lower by {early - late:.3g} (> {Z:g} s.e.; s.e. = {se:.2g})",
        f"late {_span(split, depth - 1)} higher by {late - early:.3g} (> {Z:g} s.e.; s.e. = {se:.2g})",
        f"early - late = {early - late:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})")
    return {"ours": f"AvgSim layers 0-{split - 1}: {_pm(early, early_se, '.4f')}; layers {split}-{depth - 1}: "
                    f"{_pm(late, late_se, '.4f')}",
            "spread": se, "verdict": verdict, "reason": reason,
            "headlines": [_headline("AvgSim early - late (vision)", early - late, se)]}


WORDS_ATTENTION_DOMINANT = (0.5, 1.0)  # "attention contributes more than the MLP": a share above one half


def attention_share(results: dict) -> dict:
    """Appendix B: attention's share of the update lies in the paper's range in most layers."""
    family = results.get("family", "")
    paper, _ = _reported_for("appendix_b_contributions", family)
    parts, ours, spreads, verdicts, headlines = [], [], [], [], []
    for modality in ("vision", "text"):
        p = paper.get(modality, {})
        mean, sem = _series(results, "decoder", f"decoder.attn_share.{modality}")
        depth = len(mean)
        if "attn_share_most_layers" in p:
            (lo, hi), covered, where = p["attn_share_most_layers"], depth - 1, "layers 0..L-2"
        elif "attn_share_until_late_layers" in p:
            (lo, hi), covered, where = p["attn_share_until_late_layers"], depth - final_count(depth), "before the final layers"
        else:  # the paper says it in words only: attention contributes more than the MLP
            (lo, hi), covered, where = WORDS_ATTENTION_DOMINANT, depth - final_count(depth), "before the final layers"
        parts.append(f"{modality}: {lo:.0%}-{hi:.0%} ({where})")
        m, s = mean[:max(1, covered)], sem[:max(1, covered)]
        inside = (m >= lo) & (m <= hi)
        outside = (m < lo - Z * s) | (m > hi + Z * s)
        n = len(m)
        ours.append(f"{modality}: {m.min():.0%}-{m.max():.0%}, {int(inside.sum())} of {n} layers in range "
                    f"(s.e. ≤ {s.max():.1%})")
        spreads.append(float(s.max()))
        headlines.append(_headline(f"attention share, {modality} (mean of layers 0-{n - 1})", *_mean_with_bound(m, s)))
        if inside.sum() > n / 2:
            verdicts.append((HOLDS, f"{modality} in range in {int(inside.sum())} of {n} layers"))
        elif outside.sum() >= n / 2:
            verdicts.append((FAILS, f"{modality} outside the range by > {Z:g} s.e. in {int(outside.sum())} of {n} layers"))
        else:
            verdicts.append((UNRESOLVED, f"{modality}: {int(inside.sum())} of {n} layers in range, "
                                         f"{int(outside.sum())} clearly outside"))
    names = [v for v, _ in verdicts]
    verdict = FAILS if FAILS in names else UNRESOLVED if UNRESOLVED in names else HOLDS
    return {"ours": "; ".join(ours), "spread": max(spreads), "verdict": verdict,
            "reason": "; ".join(r for _, r in verdicts), "headlines": headlines}


def text_dominated_attention(results: dict) -> dict:
    """Section 2.3: the final token attends mostly to text; its attention to vision rises in the final layers."""
    vision, vision_se = _series(results, "last_token", "decoder.last_attn.vision")
    text, text_se = _series(results, "last_token", "decoder.last_attn.text")
    depth = len(vision)
    k = final_count(depth)
    if depth - k < 1:
        return {"ours": f"{depth} layers", "spread": None,
                "verdict": NOT_COMPARABLE, "reason": f"{depth} decoder layers leave no layers before the final ones"}
    gap_se = vision_se + text_se
    text_wins = int(((text - vision) > Z * gap_se).sum())
    vision_wins = int(((vision - text) > Z * gap_se).sum())
    before, before_se = _mean_with_bound(vision[:depth - k], vision_se[:depth - k])
    final, final_se = _mean_with_bound(vision[depth - k:], vision_se[depth - k:])
    rise_se = before_se + final_se
    share = results.get("vision_share_of_prompt")
    ours = (f"text > vision in {text_wins} of {depth} layers; vision mass {_pm(before, before_se, '.3f')} before "
            f"the final {k} layer(s), {_pm(final, final_se, '.3f')} in them"
            + (f" (uniform attention: {share:.2f})" if isinstance(share, (int, float)) else ""))
    rise = final - before
    if text_wins > depth / 2 and rise > Z * rise_se:
        verdict, reason = HOLDS, f"text dominates {text_wins} of {depth} layers and vision rises by {rise:.3f} at the end"
    elif vision_wins >= depth / 2 or rise < -Z * rise_se:
        verdict = FAILS
        reason = (f"vision dominates {vision_wins} of {depth} layers" if vision_wins >= depth / 2
                  else f"vision attention falls by {-rise:.3f} in the final layers (> {Z:g} s.e.)")
    else:
        verdict = UNRESOLVED
        reason = (f"text dominates {text_wins} of {depth} layers; vision changes by {rise:+.3f} in the final "
                  f"layers (s.e. ≤ {rise_se:.2g})")
    return {"ours": ours, "spread": rise_se, "verdict": verdict, "reason": reason,
            "headlines": [_headline(f"final token's vision mass, final {k} - earlier layers", rise, rise_se),
                          _headline("layers where text > vision (of " f"{depth})", text_wins)]}


def update_spike(results: dict) -> dict:
    """Section 2.5: the vision tokens' update is small in early-to-mid layers and spikes in the final layers."""
    mean, sem = _series(results, "update", "decoder.update.vision")
    depth = len(mean)
    k = final_count(depth)
    if depth - k < 2:
        return {"ours": f"{depth} layers", "spread": None,
                "verdict": NOT_COMPARABLE, "reason": f"{depth} decoder layers leave no middle layers besides layer 0"}
    middle, middle_se = _mean_with_bound(mean[1:depth - k], sem[1:depth - k])
    final, final_se = _mean_with_bound(mean[depth - k:], sem[depth - k:])
    se = middle_se + final_se
    verdict, reason = _compare(
        final - middle, se,
        f"final layers update {final / middle:.2g}x the middle layers' (difference > {Z:g} s.e.)" if middle else "final > middle",
        f"final layers update less than the middle layers (by {middle - final:.3g}, > {Z:g} s.e.)",
        f"final - middle = {final - middle:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})")
    return {"ours": f"‖update‖ layer 0: {_pm(float(mean[0]), float(sem[0]))}; {_span(1, depth - k - 1)}: "
                    f"{_pm(middle, middle_se)}; {_span(depth - k, depth - 1)}: {_pm(final, final_se)}",
            "spread": se, "verdict": verdict, "reason": reason,
            "headlines": [_headline(f"‖update‖ (vision), final {k} - middle layers", final - middle, se)]}


# Chapter 5's feature sets, in the order a verdict prefers them: the first without the category word's
# shortcut (the caption names the category, so a caption probe reads it from the input embeddings).
VISION_SETS = ("vision_question", "vision")  # image tokens with the question after them; with the caption
TEXT_SETS = ("question", "caption_masked", "caption_deleted", "caption")


def _feature_sets(results: dict) -> list[tuple[str, bool]]:
    """(vision set, text set) to judge, each with whether it is free of the category-word shortcut."""
    summary = _get(results, "summary")
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
    summary = _get(results, "summary")
    ours, verdicts, spreads, caveats, headlines = [], [], [], [], []
    for name, clean in _feature_sets(results):
        s = _get(summary, name)
        folds = int(_get(results, "params").get("folds") or 0)
        drop, drop_sd = _get(s, "transfer_drop_mean"), _get(s, "transfer_drop_std")
        se = drop_sd / math.sqrt(folds) if folds > 1 else None
        ours.append(f"{name}: {_get(s, 'transfer_on_last_mean'):.0%} on the last state, "
                    f"{_get(s, 'transfer_on_early_mean'):.0%} on early states (drop {_pm(drop, se or float('nan'), '.2f')}); "
                    f"own-layer probes on early states {_get(s, 'own_on_early_mean'):.0%}")
        spreads.append(se)
        headlines.append(_headline(f"{name}: last-state probe, last - early states", drop, se))
        if not clean:
            caveats.append(f"{name} carries the caption's category word")
        if se is None:
            verdicts.append((UNRESOLVED, f"{name}: one fold, no spread"))
            continue
        verdicts.append(_compare(drop, se, f"{name}: the late probe drops by {drop:.0%} on early states",
                                 f"{name}: the late probe scores higher on early states",
                                 f"{name}: drop {drop:.0%} within the noise"))
    names = [v for v, _ in verdicts]
    verdict = FAILS if FAILS in names else UNRESOLVED if UNRESOLVED in names else HOLDS
    reason = "; ".join(r for _, r in verdicts) + "".join(f" ({c})" for c in caveats)
    known = [x for x in spreads if x is not None]
    return {"ours": "; ".join(ours), "spread": max(known) if known else None, "verdict": verdict, "reason": reason,
            "headlines": headlines}


def _patching_rows(results: dict) -> tuple[str, list[dict]]:
    measure = results.get("verdict_measure")
    if not measure:
        raise MissingField("results lack 'verdict_measure' (the chapter predates the regime-robust measures)")
    rows = _get(results, "rows")
    if not rows or measure not in rows[0] or f"{measure}_se" not in rows[0]:
        raise MissingField(f"rows lack {measure!r} and its standard error")
    return measure, rows


def _paper_condition(rows: list[dict]) -> str:
    conditions = {r.get("condition", "answer") for r in rows}
    return "low-rank" if "low-rank" in conditions else "answer"


def _saturated(rows: list[dict]) -> float | None:
    losses = [r["clean_loss"] for r in rows if r.get("clean_loss") is not None]
    median = float(np.median(losses)) if losses else None
    return median if median is not None and median < SATURATED_LOSS else None


def attention_patching(results: dict) -> dict:
    """Section 2.2 / Appendix D: the signs of the attention-patching shifts, rows counted after Holm."""
    family = results.get("family", "")
    if family not in ATTENTION_TABLES:
        return {"ours": "-", "spread": None, "verdict": NOT_COMPARABLE,
                "reason": f"the paper reports no attention-patching table for {family!r}"}
    comparison = _get(results, "comparison")
    needed = ("counted", "p_adjusted", "condition", "measure")
    if not comparison or any(k not in c for c in comparison for k in needed):
        raise MissingField("the comparison lacks the Holm-corrected fields " + ", ".join(needed))
    condition = "low-rank" if any(c["condition"] == "low-rank" for c in comparison) else "answer"
    chosen = [c for c in comparison if c["condition"] == condition]
    rows = [r for r in results.get("rows", []) if r.get("condition", "answer") == condition]
    measure = chosen[0]["measure"]
    counted = [c for c in chosen if c["counted"]]
    agree = [c for c in counted if c["same_sign"]]
    disagree = [c for c in counted if c["same_sign"] is False]
    largest = max(chosen, key=lambda c: abs(c["ours"]))
    ours = (f"{len(counted)} of {len(chosen)} rows resolved after Holm ({measure}, condition {condition}); "
            f"{len(agree)} with the paper's sign; largest {largest['modality']} {largest['patch']} "
            f"{_pm(largest['ours'], largest['ours_se'])}")
    headlines = [_headline(f"rows resolved with the paper's sign (of {len(chosen)}; {measure}, {condition})", len(agree)),
                 _headline(f"rows resolved against it (of {len(chosen)})", len(disagree))]
    saturated = _saturated(rows) if condition == "answer" else None
    if saturated is not None:
        return {"ours": ours, "spread": largest["ours_se"], "verdict": NOT_COMPARABLE, "headlines": headlines,
                "reason": f"the answer is saturated (clean loss {saturated:.2g} nats, the paper's 15-20) and no "
                          "paper-like low-rank condition was run"}
    if not counted:
        verdict, reason = UNRESOLVED, f"none of {len(chosen)} rows is resolved after Holm correction at 0.05"
    elif not disagree and len(counted) * 2 >= len(chosen):
        verdict, reason = HOLDS, f"all {len(counted)} resolved rows have the paper's sign"
    elif len(disagree) > len(agree):
        verdict, reason = FAILS, f"{len(disagree)} of {len(counted)} resolved rows have the opposite sign"
    else:
        verdict = UNRESOLVED
        reason = (f"mixed: {len(agree)} resolved rows agree, {len(disagree)} disagree" if disagree
                  else f"only {len(counted)} of {len(chosen)} rows resolved")
    return {"ours": ours, "spread": largest["ours_se"], "verdict": verdict, "reason": reason, "headlines": headlines}


def front_asymmetry(results: dict) -> dict:
    """Appendix E: front patching moves the answer far more at text positions than in the vision tower."""
    family = results.get("family", "")
    measure, rows = _patching_rows(results)
    condition = _paper_condition(rows)
    rows = [r for r in rows if r.get("condition", "answer") == condition]
    text = [r for r in rows if r["kind"] == "resid" and r["positions"] == "text"]
    tower = [r for r in rows if r["kind"] == "vision"]
    if not text or not tower:
        return {"ours": "-", "spread": None, "verdict": NOT_COMPARABLE,
                "reason": "the run has no text-position or no vision-tower front patches"}
    # |mean| of a difference has at most the difference's s.e.; means of rows bounded by the mean of s.e.
    t, t_se = _mean_with_bound(np.abs([r[measure] for r in text]), np.array([r[f"{measure}_se"] for r in text]))
    v, v_se = _mean_with_bound(np.abs([r[measure] for r in tower]), np.array([r[f"{measure}_se"] for r in tower]))
    se = t_se + v_se
    verdict, reason = _compare(t - v, se, f"text moves the answer {t / v:.2g}x as much as the vision tower" if v else
                               "text moves the answer, the vision tower does not",
                               "the vision tower moves the answer more than text positions",
                               f"text - vision = {t - v:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})")
    return {"ours": f"mean |{measure}| text {_pm(t, t_se)}, vision tower {_pm(v, v_se)} (condition {condition})",
            "spread": se, "verdict": verdict, "reason": reason,
            "headlines": [_headline(f"mean |{measure}|, text - vision tower ({condition})", t - v, se)]}


def retrieve_late(results: dict) -> dict:
    """Section 2.3 and the conclusion, tested causally (chapter 8): text reads the image only in the final
    layers. A layer is critical when hiding the image from all text positions in that layer alone lowers
    top-1 accuracy by more than Z paired s.e. (the chapter's `critical_layers`). Holds when every critical
    layer is a final layer; does not hold when one is earlier; unresolved when no single layer is
    critical (a reading spread over layers that cover for each other)."""
    summary = _get(results, "summary")
    final_layers = set(_get(summary, "final_layers"))
    text = _get(summary, "text")
    critical = list(_get(text, "critical_layers"))
    final_queries = (summary.get("final") or {}).get("critical_layers")
    ours = (f"critical layers from all text positions: {critical or 'none'}; from the final position: "
            f"{final_queries if final_queries is not None else '-'}; final layers {sorted(final_layers)}")
    early = [layer for layer in critical if layer not in final_layers]
    knocked = _get(text, "final_layers_knockout")
    spread = knocked.get("knocked_acc_se")
    headlines = [_headline("critical layers before the final layers", len(early)),
                 _headline(f"accuracy, image hidden from text in the final layers {sorted(final_layers)}",
                           knocked.get("knocked_acc"), spread)]
    if early:
        return {"ours": ours, "spread": spread, "verdict": FAILS, "headlines": headlines,
                "reason": f"hiding the image in layer{'s' if len(early) > 1 else ''} {early} alone, before the final "
                          "layers, costs accuracy: the image is read there"}
    if not critical:
        return {"ours": ours, "spread": spread, "verdict": UNRESOLVED, "headlines": headlines,
                "reason": "no single layer is needed: the reading is spread over layers that cover for each other"}
    return {"ours": ours, "spread": spread, "verdict": HOLDS, "headlines": headlines,
            "reason": f"only final layers {critical} are needed to read the image"}


CLAIMS = [
    Claim("similarity-drop", "2.1", "Similarity drops in the last layers",
          "Vision tokens pass the early layers nearly unchanged; their similarity between consecutive layers "
          "drops in the last layers.",
          "01_representations", similarity_drop, _paper_words("section_2_1_representations")),
    Claim("attention-share", "Appendix B", "Attention's share of the update",
          "Attention's share of the update to the residual stream lies in the paper's range in most layers.",
          "02_contributions", attention_share, _paper_attention_share),
    Claim("attention-patching", "2.2, Appendix D", "Attention-output patching: directions",
          "Attention-output patching shifts the answer in the directions of Tables 1-2.",
          "03_attention_patching", attention_patching, _paper_attention_patching),
    Claim("text-dominated-attention", "2.3", "Text-dominated attention, vision late",
          "The final token attends mostly to text; its attention to vision rises only in the final layers.",
          "04_attention_modality", text_dominated_attention, _paper_words("section_2_3_attention")),
    Claim("late-probes", "2.4", "Late probes transfer poorly",
          "Linear probes trained on the last layers score best there and degrade on earlier layers.",
          "05_probing", late_probes, _paper_probes),
    Claim("update-spike", "2.5", "Late update spike",
          "Vision tokens' residual update is weakest in early-to-mid layers and spikes in the final layers.",
          "06_residual_update", update_spike, _paper_words("section_2_5_update")),
    Claim("front-patching-asymmetry", "Appendix E", "Front patching: text more depth-sensitive",
          "Front patching moves the answer far more at text positions than in the vision tower "
          "(text is more depth-sensitive).",
          "07_front_patching", front_asymmetry, _paper_front),
    Claim("retrieve-late", "2.3, Conclusion (tested by knockout)", "Text reads the image late",
          "Text reads the image only in the final layers: cross-modal attention from text to vision matters "
          "only in the final transformer blocks.",
          "08_knockout", retrieve_late,
          lambda family: "text-to-vision attention negligible in early layers, significant only in the final "
                         "blocks (attention readings, no intervention)"),
]


def evaluate(claim: Claim, results: dict | None, family: str = "") -> dict:
    """One claim's finding on one chapter's results (None: the chapter did not run)."""
    family = (results or {}).get("family") or family
    base = {"claim_id": claim.claim_id, "claim": claim.claim, "section": claim.section, "chapter": claim.chapter,
            "family": family, "anchor": f"{claim.chapter}#{claim.anchor}", "paper": claim.paper(family),
            "headlines": []}
    if results is None:
        return {**base, "ours": "-", "spread": None, "verdict": UNRESOLVED,
                "reason": f"chapter {claim.chapter} has no results file (not run)"}
    try:
        found = claim.rule(results)
    except MissingField as missing:
        found = {"ours": "-", "spread": None, "verdict": UNRESOLVED, "reason": str(missing)}
    if found["verdict"] not in VERDICTS:
        raise ValueError(f"rule {claim.claim_id} returned an unknown verdict {found['verdict']!r}")
    return {**base, **found}


def chapter_findings(results: dict) -> list[dict]:
    """The findings for the claims a chapter's results answer (for its results file's "findings")."""
    chapter = results.get("chapter")
    return [evaluate(c, results) for c in CLAIMS if c.chapter == chapter]


def all_findings(results_by_chapter: dict[str, dict | None], family: str = "") -> list[dict]:
    """Every claim, in the paper's order, for one family's results {chapter: results or None}."""
    return [evaluate(c, results_by_chapter.get(c.chapter), family) for c in CLAIMS]
