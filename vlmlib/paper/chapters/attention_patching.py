"""Chapter 3, attention-output patching (paper section 2.2, Appendix D, Tables 1-2): the claim, its rule,
the side-by-side bars."""

from __future__ import annotations

import math

import numpy as np

from ..claims import (FAILS, HOLDS, NOT_COMPARABLE, SATURATED_LOSS, UNRESOLVED, Z, Claim, MissingField, compare,
                      final_count, get_field, headline, layers_phrase, mean_with_bound, paper_condition, paper_words,
                      patching_rows, pm, reported_for, saturated, series, table_ranges)
from ..spec import ChapterSpec, SideBySide
from ..patching import patch_bars
from ..values import ATTENTION_TABLES, FRONT_TABLES, paper_values


def _paper_attention_patching(family: str) -> str:
    if family not in ATTENTION_TABLES:
        return "no table for this family"
    table = paper_values(ATTENTION_TABLES[family])
    return f"{table['source'].split(':')[0]}: {table_ranges(table)}"


def attention_patching(results: dict) -> dict:
    """Section 2.2 / Appendix D: the signs of the attention-patching shifts, rows counted after Holm."""
    family = results.get("family", "")
    if family not in ATTENTION_TABLES:
        return {"ours": "-", "spread": None, "verdict": NOT_COMPARABLE,
                "reason": f"the paper reports no attention-patching table for {family!r}"}
    comparison = get_field(results, "comparison")
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
            f"{pm(largest['ours'], largest['ours_se'])}")
    headlines = [headline(f"rows resolved with the paper's sign (of {len(chosen)}; {measure}, {condition})", len(agree)),
                 headline(f"rows resolved against it (of {len(chosen)})", len(disagree))]
    saturated = saturated(rows) if condition == "answer" else None
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


CLAIM = Claim("attention-patching", "2.2, Appendix D", "Attention-output patching: directions",
          "Attention-output patching shifts the answer in the directions of Tables 1-2.",
          "03_attention_patching", attention_patching, _paper_attention_patching)


SPEC = ChapterSpec(
    "03_attention_patching",
    claims=(CLAIM,),
    side_by_side=SideBySide("bars", patch_bars,
                            "Attention-output patching, each row the chapter's verdict measure, ±1 s.e. (paired)."),
)
