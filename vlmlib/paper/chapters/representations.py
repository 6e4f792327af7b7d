"""Chapter 1, vision representations across layers (paper section 2.1, Figure 1): the claim, its rule,
the summary beside the paper, the side-by-side curves."""

from __future__ import annotations

import numpy as np

from ..claims import (
    NOT_COMPARABLE,
    Claim,
    Z,
    compare,
    headline,
    layers_phrase,
    mean_with_bound,
    paper_words,
    series,
)
from ..format import pm
from ..groups import late_boundary
from ..spec import ChapterSpec, SideBySide

FLOOR = 0.01  # cosine similarity: a smaller drop is not one a reader would call a drop


def similarity_drop(results: dict) -> dict:
    """Section 2.1: vision tokens' consecutive-layer similarity is lower in the late layers than before."""
    mean, sem = series(results, "avg_sim", "vision")
    depth = len(mean)
    if depth < 3:
        return {
            "ours": f"{depth} layers",
            "spread": None,
            "verdict": NOT_COMPARABLE,
            "reason": f"{depth} decoder layers leave no early and late part to compare",
        }
    split = late_boundary(depth)
    early, early_se = mean_with_bound(mean[:split], sem[:split])
    late, late_se = mean_with_bound(mean[split:], sem[split:])
    se = early_se + late_se
    verdict, reason = compare(
        early - late,
        se,
        f"late {layers_phrase(split, depth - 1)} lower by {early - late:.3g} (> {Z:g} s.e.; s.e. = {se:.2g})",
        f"late {layers_phrase(split, depth - 1)} higher by {late - early:.3g} "
        f"(> {Z:g} s.e.; s.e. = {se:.2g})",
        f"early - late = {early - late:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})",
        floor=FLOOR,
    )
    return {
        "ours": f"AvgSim layers 0-{split - 1}: {pm(early, early_se, '.4f')}; layers {split}-{depth - 1}: "
        f"{pm(late, late_se, '.4f')}",
        "spread": se,
        "verdict": verdict,
        "reason": reason,
        "headlines": [headline("AvgSim early - late (vision)", early - late, se)],
    }


CLAIM = Claim(
    "similarity-drop",
    "2.1",
    "Similarity drops in the last layers",
    "Vision tokens pass the early layers nearly unchanged; their similarity between consecutive layers "
    "drops in the last layers.",
    "01_representations",
    similarity_drop,
    paper_words("section_2_1_representations"),
    last_layer_series=(("avg_sim", "vision"),),
    floor=FLOOR,
    task_dependent=False,  # image tokens' processing: comparable whatever the question
)


def summary(mean: np.ndarray, sem: np.ndarray) -> dict:
    """AvgSim of the vision tokens on each side of the paper's boundary (its layers 1-10 and 11-18,
    scaled to the depth), and the layer that turns them most."""
    depth = len(mean)
    split = late_boundary(depth)
    lowest = int(mean.argmin())
    return {
        "early_mean": float(mean[:split].mean()),
        "late_mean": float(mean[split:].mean()),
        "split_layer": split,
        "lowest_layer": lowest,
        "lowest": float(mean.min()),
        "lowest_sem": float(sem[lowest]),
    }


SPEC = ChapterSpec(
    "01_representations",
    claims=(CLAIM,),
    readings=("cosine", "vision_tower"),
    side_by_side=SideBySide(
        "lines",
        lambda r: (
            {"vision tokens": series(r, "avg_sim", "vision"), "text tokens": series(r, "avg_sim", "text")},
            "AvgSim: cosine of a layer's input and output",
        ),
        "Consecutive-layer cosine similarity of vision (solid) and text (dashed) tokens; bands ±1 s.e.",
    ),
)
