"""Chapter 7, front patching (paper Appendix E, Tables 3-4): the claim, its rule, the side-by-side bars."""

from __future__ import annotations

import math

import numpy as np

from ..claims import (FAILS, HOLDS, NOT_COMPARABLE, SATURATED_LOSS, UNRESOLVED, Z, Claim, MissingField, compare,
                      final_count, get_field, headline, layers_phrase, mean_with_bound, paper_condition, paper_words,
                      patching_rows, pm, reported_for, saturated, series, table_ranges)
from ..spec import ChapterSpec, SideBySide
from ..patching import patch_bars
from ..values import ATTENTION_TABLES, FRONT_TABLES, paper_values


def _paper_front(family: str) -> str:
    if family not in FRONT_TABLES:
        return "no table for this family"
    table = paper_values(FRONT_TABLES[family])
    mean = {m: np.mean([abs(r["delta"]) for r in table["rows"] if r["modality"] == m]) for m in ("Text", "Vision")}
    return f"{table['source'].split(':')[0]}: mean |Δ logit| text {mean['Text']:.2f}, vision tower {mean['Vision']:.2f}"


def front_asymmetry(results: dict) -> dict:
    """Appendix E: front patching moves the answer far more at text positions than in the vision tower."""
    family = results.get("family", "")
    measure, rows = patching_rows(results)
    condition = paper_condition(rows)
    rows = [r for r in rows if r.get("condition", "answer") == condition]
    text = [r for r in rows if r["kind"] == "resid" and r["positions"] == "text"]
    tower = [r for r in rows if r["kind"] == "vision"]
    if not text or not tower:
        return {"ours": "-", "spread": None, "verdict": NOT_COMPARABLE,
                "reason": "the run has no text-position or no vision-tower front patches"}
    # |mean| of a difference has at most the difference's s.e.; means of rows bounded by the mean of s.e.
    t, t_se = mean_with_bound(np.abs([r[measure] for r in text]), np.array([r[f"{measure}_se"] for r in text]))
    v, v_se = mean_with_bound(np.abs([r[measure] for r in tower]), np.array([r[f"{measure}_se"] for r in tower]))
    se = t_se + v_se
    verdict, reason = compare(t - v, se, f"text moves the answer {t / v:.2g}x as much as the vision tower" if v else
                               "text moves the answer, the vision tower does not",
                               "the vision tower moves the answer more than text positions",
                               f"text - vision = {t - v:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})")
    return {"ours": f"mean |{measure}| text {pm(t, t_se)}, vision tower {pm(v, v_se)} (condition {condition})",
            "spread": se, "verdict": verdict, "reason": reason,
            "headlines": [headline(f"mean |{measure}|, text - vision tower ({condition})", t - v, se)]}


CLAIM = Claim("front-patching-asymmetry", "Appendix E", "Front patching: text more depth-sensitive",
          "Front patching moves the answer far more at text positions than in the vision tower "
          "(text is more depth-sensitive).",
          "07_front_patching", front_asymmetry, _paper_front)


SPEC = ChapterSpec(
    "07_front_patching",
    claims=(CLAIM,),
    side_by_side=SideBySide("bars", patch_bars,
                            "Front patching, each row the chapter's verdict measure, ±1 s.e. (paired)."),
)
