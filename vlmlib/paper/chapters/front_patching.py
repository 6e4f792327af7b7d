"""Chapter 7, front patching (paper Appendix E, Tables 3-4): the claim, its rule, the run's preparation
(layer groups, the paper's table), its patches, the last-pair check, the conclusion, the side-by-side bars."""

from __future__ import annotations

import numpy as np

from ...interventions.patching import Patch, PatchResult, front_patches, patch_experiment
from ...params import as_list
from ..claims import (
    NOT_COMPARABLE,
    Claim,
    Z,
    compare,
    headline,
    mean_with_bound,
    paper_condition,
    patching_rows,
)
from ..format import count, decimal, nats, pm
from ..groups import GroupPlan, model_groups, paper_groups_fit
from ..patching import MEASURE_LABELS, comparison_summary, lead_sentences, modality_name, patch_bars
from ..spec import ChapterSpec, SideBySide
from ..values import FRONT_TABLES, family_table, paper_values


def _paper_front(family: str) -> str:
    if family not in FRONT_TABLES:
        return "no table for this family"
    table = paper_values(FRONT_TABLES[family])
    mean = {
        m: np.mean([abs(r["delta"]) for r in table["rows"] if r["modality"] == m]) for m in ("Text", "Vision")
    }
    return (
        f"{table['source'].split(':')[0]}: mean |Δ logit| text {mean['Text']:.2f}, "
        f"vision tower {mean['Vision']:.2f}"
    )


def front_asymmetry(results: dict) -> dict:
    """Appendix E: front patching moves the answer far more at text positions than in the vision tower.
    Not comparable when the vision tower is too shallow for the paper's source groups (2-4, 5-7, 7-9,
    10-12) and its final three (16 layers): the question is about those layers."""
    tower_plan = (results.get("group_plans") or {}).get("vision_tower") or {}
    depth = tower_plan.get("depth")
    if isinstance(depth, int) and not paper_groups_fit(depth, "front"):
        return {
            "ours": f"a {depth}-layer vision tower",
            "spread": None,
            "verdict": NOT_COMPARABLE,
            "reason": f"a {depth}-layer vision tower cannot hold Appendix E's source groups 2-4, 5-7, 7-9 "
            "and 10-12 beside its final three layers (it needs 16); scaled groups of "
            f"{count(len(next(iter(tower_plan.get('groups', {'': [0]}).values()))), 'layer')} ask another "
            "question",
        }
    measure, rows = patching_rows(results)
    label = MEASURE_LABELS.get(measure, measure)
    condition = paper_condition(rows)
    rows = [r for r in rows if r.get("condition", "answer") == condition]
    text = [r for r in rows if r["kind"] == "resid" and r["positions"] == "text"]
    tower = [r for r in rows if r["kind"] == "vision"]
    if not text or not tower:
        return {
            "ours": "-",
            "spread": None,
            "verdict": NOT_COMPARABLE,
            "reason": "the run has no text-position or no vision-tower front patches",
        }
    # |mean| of a difference has at most the difference's s.e.; means of rows bounded by the mean of s.e.
    t, t_se = mean_with_bound(
        np.abs([r[measure] for r in text]), np.array([r[f"{measure}_se"] for r in text])
    )
    v, v_se = mean_with_bound(
        np.abs([r[measure] for r in tower]), np.array([r[f"{measure}_se"] for r in tower])
    )
    se = t_se + v_se
    verdict, reason = compare(
        t - v,
        se,
        f"text moves the answer {t / v:.2g}x as much as the vision tower"
        if v
        else "text moves the answer, the vision tower does not",
        "the vision tower moves the answer more than text positions",
        f"text - vision = {t - v:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})",
    )
    return {
        "ours": f"mean |{label}| text {pm(t, t_se)}, vision tower {pm(v, v_se)} (condition {condition})",
        "spread": se,
        "verdict": verdict,
        "reason": reason,
        "headlines": [headline(f"mean |{label}|, text - vision tower ({condition})", t - v, se)],
    }


CLAIM = Claim(
    "front-patching-asymmetry",
    "Appendix E",
    "Front patching: text more depth-sensitive",
    "Front patching moves the answer far more at text positions than in the vision tower "
    "(text is more depth-sensitive).",
    "07_front_patching",
    front_asymmetry,
    _paper_front,
)


def prepare(run) -> None:
    """The run's derived parameters and plans, before the header: `sources` and `decoder_positions` as
    lists (run.params); the decoder's and the vision tower's layer groups, the paper's table for the family
    and its name (run.extra: decoder_plan, tower_plan, paper, paper_table)."""
    params, family = run.params, run.lm.family.name
    params["sources"] = as_list(params["sources"], "sources")
    params["decoder_positions"] = as_list(params["decoder_positions"], "decoder_positions")
    run.extra["decoder_plan"] = model_groups(run.lm, "front", params["groups"])
    run.extra["tower_plan"] = model_groups(run.lm, "front", params["vision_groups"], tower=True)
    run.extra["paper_table"] = FRONT_TABLES.get(family)
    run.extra["paper"] = family_table(FRONT_TABLES, family)


def chapter_patches(
    decoder_plan: GroupPlan, tower_plan: GroupPlan, sources: list[str], decoder_positions: list[str]
) -> list[Patch]:
    """The chapter's configurations: each source group written over the final group, first in the vision
    tower (whole layer outputs, every patch), then in the decoder at each of `decoder_positions`."""
    patches = front_patches(tower_plan, sources, "vision")
    for pos in decoder_positions:
        patches += front_patches(decoder_plan, sources, "resid", pos)
    return patches


def last_pair_gaps(
    lm,
    samples,
    patches: list[Patch],
    result: PatchResult,
    n_checked: int = 32,
    batch_size: int = 8,
    target: str = "auto",
    max_rows: int = 32,
) -> dict[str, float]:
    """Per site (`modality_name`): the largest gap in the answer condition's patched logit between each
    patch with all its pairs (`result`, run on `samples`) and the same patch with only its last pair, run
    on the first `n_checked` samples. 0 where a front patch reduces to its last pair."""
    checked = samples[:n_checked]
    last_pair = [Patch(p.kind, p.sources[-1:], p.targets[-1:], p.positions, p.label) for p in patches]
    alone = patch_experiment(
        lm, checked, last_pair, batch_size=batch_size, target=target, max_rows=max_rows, conditions=["answer"]
    )
    gaps: dict[str, list[float]] = {}
    for k, p in enumerate(patches):
        gaps.setdefault(modality_name({"kind": p.kind, "positions": p.positions}), []).append(
            float(np.abs(result.patched_logit[k][: len(checked)] - alone.patched_logit[k]).max())
        )
    return {name: max(gap) for name, gap in gaps.items()}


def last_pair_table(gaps: dict[str, float]) -> str:
    """The last-pair check as a table: each site's largest gap and what it should be."""
    table = [
        "| site | largest gap in patched logit, all pairs vs last pair only | expected |",
        "|---|---|---|",
    ]
    for name, gap in gaps.items():
        expected = "need not be 0" if name.endswith("vision positions") else "0"
        table.append(f"| {name} | {decimal(gap, 2)} | {expected} |")
    return "\n".join(table)


# The sites of the conclusion, (kind, positions) -> name.
SITES = {
    ("vision", "all"): "vision tower",
    ("resid", "text"): "decoder, text positions",
    ("resid", "vision"): "decoder, vision positions",
}


def conclusion(
    rows: list[dict],
    conditions,
    comparison: list[dict],
    decoder_plan: GroupPlan,
    tower_plan: GroupPlan,
    measure: str,
) -> list[str]:
    """What this run shows: two sentences for a person first (`patching.lead_sentences`), then per
    condition the clean target, the range of shifts per site
    and the largest, the modality asymmetry (text positions against the vision tower); how many compared
    rows resolve with the paper's sign; the group plans' notes."""
    label = MEASURE_LABELS[measure]
    lines = lead_sentences(
        rows, comparison, measure, "an earlier group of layers' output over the final layers'", target="final"
    )
    for condition in conditions:
        sub = [r for r in rows if r["condition"] == condition]
        lines.append(
            f"Condition *{condition}*: the clean target has loss {nats(sub[0]['clean_loss'])} ± "
            f"{nats(sub[0]['clean_loss_se'])} nats (the paper's: 14.9-19.6) and top-1 accuracy "
            f"{sub[0]['clean_acc']:.2f}."
        )
        for key, name in SITES.items():
            group = [r for r in sub if (r["kind"], r["positions"]) == key]
            if not group:
                continue
            worst = max(group, key=lambda r: abs(r[measure]))
            lines.append(
                f"{condition}, {name}: {label} from {min(r[measure] for r in group):+.2f} to "
                f"{max(r[measure] for r in group):+.2f}; largest with source {worst['label']} "
                f"({worst[measure]:+.2f} ± {worst[measure + '_se']:.2f}, top-1 accuracy "
                f"{worst['clean_acc']:.2f} → {worst['patched_acc']:.2f})."
            )
        text = [r for r in sub if r["kind"] == "resid" and r["positions"] == "text"]
        tower = [r for r in sub if r["kind"] == "vision"]
        if text and tower:
            t, v = np.mean([abs(r[measure]) for r in text]), np.mean([abs(r[measure]) for r in tower])
            lines.append(
                f"{condition}, modality asymmetry (the paper's E.1.4): mean |{label}| {t:.2f} for "
                f"the decoder at text positions vs {v:.2f} for the vision tower (difference "
                f"{t - v:+.2f}; the What holds page tests it against its spread)."
            )
    for condition, s in comparison_summary(comparison).items():
        lines.append(
            f"Against the paper, condition {condition}: {s['counted']} of {s['rows']} rows resolved "
            f"after Holm correction ({label}); {s['same_sign']} with the paper's sign."
        )
    lines.extend(f"{note}." for note in [*decoder_plan.notes, *tower_plan.notes])
    return lines


SPEC = ChapterSpec(
    "07_front_patching",
    claims=(CLAIM,),
    side_by_side=SideBySide(
        "bars", patch_bars, "Front patching, each row the chapter's verdict measure, ±1 s.e. (paired)."
    ),
    prepare=prepare,
)
