"""Chapter 4, attention by modality (paper section 2.3, Appendix C, Figures 2, 9-10): the claim, its rule,
the side-by-side curves."""

from __future__ import annotations

import math

import numpy as np

from ..claims import (FAILS, HOLDS, NOT_COMPARABLE, SATURATED_LOSS, UNRESOLVED, Z, Claim, MissingField, compare,
                      final_count, get_field, headline, layers_phrase, mean_with_bound, paper_condition, paper_words,
                      patching_rows, pm, reported_for, saturated, series, table_ranges)
from ..spec import ChapterSpec, SideBySide


def text_dominated_attention(results: dict) -> dict:
    """Section 2.3: the final token attends mostly to text; its attention to vision rises in the final layers."""
    vision, vision_se = series(results, "last_token", "decoder.last_attn.vision")
    text, text_se = series(results, "last_token", "decoder.last_attn.text")
    depth = len(vision)
    k = final_count(depth)
    if depth - k < 1:
        return {"ours": f"{depth} layers", "spread": None,
                "verdict": NOT_COMPARABLE, "reason": f"{depth} decoder layers leave no layers before the final ones"}
    gap_se = vision_se + text_se
    text_wins = int(((text - vision) > Z * gap_se).sum())
    vision_wins = int(((vision - text) > Z * gap_se).sum())
    before, before_se = mean_with_bound(vision[:depth - k], vision_se[:depth - k])
    final, final_se = mean_with_bound(vision[depth - k:], vision_se[depth - k:])
    rise_se = before_se + final_se
    share = results.get("vision_share_of_prompt")
    ours = (f"text > vision in {text_wins} of {depth} layers; vision mass {pm(before, before_se, '.3f')} before "
            f"the final {k} layer(s), {pm(final, final_se, '.3f')} in them"
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
            "headlines": [headline(f"final token's vision mass, final {k} - earlier layers", rise, rise_se),
                          headline("layers where text > vision (of " f"{depth})", text_wins)]}


CLAIM = Claim("text-dominated-attention", "2.3", "Text-dominated attention, vision late",
          "The final token attends mostly to text; its attention to vision rises only in the final layers.",
          "04_attention_modality", text_dominated_attention, paper_words("section_2_3_attention"))


SPEC = ChapterSpec(
    "04_attention_modality",
    claims=(CLAIM,),
    readings=("attention",),
    side_by_side=SideBySide(
        "lines", lambda r: ({"mass on vision keys": series(r, "last_token", "decoder.last_attn.vision")},
                            "final token's attention to vision"),
        "The final token's attention mass on image tokens; dotted lines: the share a uniform attention would give.",
        ylim=(0, 1), reference=lambda r: r.get("vision_share_of_prompt")),
)
