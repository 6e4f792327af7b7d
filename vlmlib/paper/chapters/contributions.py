"""Chapter 2, attention vs MLP contributions (paper Appendix B, Figures 5-8): the claim, its rule, the
side-by-side curves."""

from __future__ import annotations

import math

import numpy as np

from ..claims import (FAILS, HOLDS, NOT_COMPARABLE, SATURATED_LOSS, UNRESOLVED, Z, Claim, MissingField, compare,
                      final_count, get_field, headline, layers_phrase, mean_with_bound, paper_condition, paper_words,
                      patching_rows, pm, reported_for, saturated, series, table_ranges)
from ..spec import ChapterSpec, SideBySide


def _paper_attention_share(family: str) -> str:
    values, note = reported_for("appendix_b_contributions", family)
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


WORDS_ATTENTION_DOMINANT = (0.5, 1.0)  # "attention contributes more than the MLP": a share above one half


def attention_share(results: dict) -> dict:
    """Appendix B: attention's share of the update lies in the paper's range in most layers."""
    family = results.get("family", "")
    paper, _ = reported_for("appendix_b_contributions", family)
    parts, ours, spreads, verdicts, headlines = [], [], [], [], []
    for modality in ("vision", "text"):
        p = paper.get(modality, {})
        mean, sem = series(results, "decoder", f"decoder.attn_share.{modality}")
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
        headlines.append(headline(f"attention share, {modality} (mean of layers 0-{n - 1})", *mean_with_bound(m, s)))
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


CLAIM = Claim("attention-share", "Appendix B", "Attention's share of the update",
          "Attention's share of the update to the residual stream lies in the paper's range in most layers.",
          "02_contributions", attention_share, _paper_attention_share)


SPEC = ChapterSpec(
    "02_contributions",
    claims=(CLAIM,),
    readings=("contributions", "update", "vision_tower"),
    side_by_side=SideBySide(
        "lines", lambda r: ({"vision tokens": series(r, "decoder", "decoder.attn_share.vision"),
                             "text tokens": series(r, "decoder", "decoder.attn_share.text")},
                            "attention's share of the update"),
        "Attention's share ‖Δattn‖ / (‖Δattn‖ + ‖ΔMLP‖), vision (solid) and text (dashed) tokens; bands ±1 s.e.",
        ylim=(0, 1)),
)
