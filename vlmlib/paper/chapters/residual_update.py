"""Chapter 6, the residual stream update (paper section 2.5, Figure 4): the claim, its rule, the
relative update and the summary beside the paper, the side-by-side curve."""

from __future__ import annotations

import numpy as np

from ..claims import (
    NOT_COMPARABLE,
    Claim,
    Z,
    compare,
    get_field,
    headline,
    layers_phrase,
    mean_with_bound,
    paper_words,
    series,
)
from ..format import pm
from ..groups import final_count
from ..spec import ChapterSpec, SideBySide


def update_spike(results: dict) -> dict:
    """Section 2.5: the vision tokens' update is small in early-to-mid layers and spikes in the final
    layers."""
    mean, sem = series(results, "update", "decoder.update.vision")
    depth = len(mean)
    k = final_count(depth, results.get("family"))
    if depth - k < 2:
        return {
            "ours": f"{depth} layers",
            "spread": None,
            "verdict": NOT_COMPARABLE,
            "reason": f"{depth} decoder layers leave no middle layers besides layer 0",
        }
    middle, middle_se = mean_with_bound(mean[1 : depth - k], sem[1 : depth - k])
    final, final_se = mean_with_bound(mean[depth - k :], sem[depth - k :])
    se = middle_se + final_se
    verdict, reason = compare(
        final - middle,
        se,
        f"final layers update {final / middle:.2g}x the middle layers' (difference > {Z:g} s.e.)"
        if middle
        else "final > middle",
        f"final layers update less than the middle layers (by {middle - final:.3g}, > {Z:g} s.e.)",
        f"final - middle = {final - middle:.3g}, within {Z:g} s.e. (s.e. = {se:.2g})",
    )
    return {
        "ours": f"‖update‖ layer 0: {pm(float(mean[0]), float(sem[0]))}; {layers_phrase(1, depth - k - 1)}: "
        f"{pm(middle, middle_se)}; {layers_phrase(depth - k, depth - 1)}: {pm(final, final_se)}",
        "spread": se,
        "verdict": verdict,
        "reason": reason,
        "headlines": [headline(f"‖update‖ (vision), final {k} - middle layers", final - middle, se)],
    }


CLAIM = Claim(
    "update-spike",
    "2.5",
    "Late update spike",
    "Vision tokens' residual update is weakest in early-to-mid layers and spikes in the final layers.",
    "06_residual_update",
    update_spike,
    paper_words("section_2_5_update"),
    last_layer_series=(("update", "decoder.update.vision"),),
    task_dependent=False,  # image tokens' processing: comparable whatever the question
)


def relative_update(obs, modalities=("vision", "text")) -> dict:
    """Each modality's update per layer relative to the stream it changes: the mean ‖update‖ of layer i over
    the mean ‖H(i)‖ of the same tokens (the layer's input), one value per decoder layer."""
    return {m: obs.mean(f"decoder.update.{m}") / obs.mean(f"decoder.norm.{m}")[:-1] for m in modalities}


def summary(mean: np.ndarray, sem: np.ndarray, family: str | None = None) -> dict:
    """The vision tokens' update described as the paper describes Figure 4: the first layer (with its
    standard error), the mean of the middle layers (1 up to the final ones; NaN where there are none), the
    mean of the final layers (`vlmlib.paper.groups.final_layers`) and which they are, and the layers of the
    smallest and the largest update."""
    depth = len(mean)
    k = final_count(depth, family)
    middle = mean[1 : depth - k].mean() if depth - k > 1 else float("nan")
    return {
        "first_layer": float(mean[0]),
        "first_layer_sem": float(sem[0]),
        "middle_mean": float(middle),
        "final_layers_mean": float(mean[depth - k :].mean()),
        "final_layers": list(range(depth - k, depth)),
        "lowest_layer": int(mean.argmin()),
        "highest_layer": int(mean.argmax()),
    }


def _side_by_side(results: dict) -> tuple[dict, str]:
    rel = get_field(results, "relative_update", "vision")
    return {"vision tokens": (np.asarray(rel, float), np.zeros(len(rel)))}, "update / input norm (vision)"


SPEC = ChapterSpec(
    "06_residual_update",
    claims=(CLAIM,),
    readings=("update", "vision_tower"),
    side_by_side=SideBySide(
        "lines",
        _side_by_side,
        "Update of vision tokens relative to the stream's size (scale-free, so families of different widths "
        "compare); the chapter shows absolute norms.",
    ),
)
