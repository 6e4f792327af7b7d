"""Chapter 8, attention knockout (beyond the paper: section 2.3 tested causally): the claim, its rule, the
side-by-side curves."""

from __future__ import annotations

import math

import numpy as np

from ..claims import (FAILS, HOLDS, NOT_COMPARABLE, SATURATED_LOSS, UNRESOLVED, Z, Claim, MissingField, compare,
                      final_count, get_field, headline, layers_phrase, mean_with_bound, paper_condition, paper_words,
                      patching_rows, pm, reported_for, saturated, series, table_ranges)
from ..spec import ChapterSpec, SideBySide


def retrieve_late(results: dict) -> dict:
    """Section 2.3 and the conclusion, tested causally (chapter 8): text reads the image only in the final
    layers. A layer is critical when hiding the image from all text positions in that layer alone lowers
    top-1 accuracy by more than Z paired s.e. (the chapter's `critical_layers`). Holds when every critical
    layer is a final layer; does not hold when one is earlier; unresolved when no single layer is
    critical (a reading spread over layers that cover for each other)."""
    summary = get_field(results, "summary")
    final_layers = set(get_field(summary, "final_layers"))
    text = get_field(summary, "text")
    critical = list(get_field(text, "critical_layers"))
    final_queries = (summary.get("final") or {}).get("critical_layers")
    ours = (f"critical layers from all text positions: {critical or 'none'}; from the final position: "
            f"{final_queries if final_queries is not None else '-'}; final layers {sorted(final_layers)}")
    early = [layer for layer in critical if layer not in final_layers]
    knocked = get_field(text, "final_layers_knockout")
    spread = knocked.get("knocked_acc_se")
    headlines = [headline("critical layers before the final layers", len(early)),
                 headline(f"accuracy, image hidden from text in the final layers {sorted(final_layers)}",
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


CLAIM = Claim("retrieve-late", "2.3, Conclusion (tested by knockout)", "Text reads the image late",
          "Text reads the image only in the final layers: cross-modal attention from text to vision matters "
          "only in the final transformer blocks.",
          "08_knockout", retrieve_late,
          lambda family: "text-to-vision attention negligible in early layers, significant only in the final "
                         "blocks (attention readings, no intervention)")


def _side_by_side(results: dict) -> tuple[dict, str]:
    curves = {}
    for label, queries in (("from all text positions", "text"), ("from the final position", "final")):
        layer = get_field(results, "per_layer", queries, "layer")
        curves[label] = (np.asarray(layer["knocked_acc"], float), np.asarray(layer["knocked_acc_se"], float))
    return curves, "top-1 accuracy, image hidden in one layer"


SPEC = ChapterSpec(
    "08_knockout",
    claims=(CLAIM,),
    side_by_side=SideBySide(
        "lines", _side_by_side,
        "Top-1 accuracy when the image is hidden from all text positions (solid) or from the final position "
        "(dashed) in one layer only; a dip marks a layer where the answer reads the image; bands ±1 s.e.",
        ylim=(0, 1.03)),
)
