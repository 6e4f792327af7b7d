"""Chapter 4, attention by modality (paper section 2.3, Appendix C, Figures 2, 9-10): the claim, its rule,
the quadrant layer (derived before the header), the summary of the final token's attention, the
side-by-side curves."""

from __future__ import annotations

import copy

import numpy as np

from ...observation import QUADRANTS
from ..claims import (
    FAILS,
    HOLDS,
    NOT_COMPARABLE,
    UNRESOLVED,
    Alternative,
    Claim,
    Z,
    get_field,
    headline,
    mean_with_bound,
    paper_words,
    series,
)
from ..format import pm
from ..groups import final_count, most
from ..spec import ChapterSpec, SideBySide

RATIO = "last_token_ratio"  # results key of the token-share-normalised masses
FLOOR = 0.1  # a rise of vision's mass per token smaller than a tenth of the uniform share does not count
NOSINK = "without the first token (attention sink)"


def text_dominated_attention(results: dict) -> dict:
    """Section 2.3: the final token attends mostly to text; its attention to vision rises in the final
    layers. Judged per token: each modality's mass over its share of the prompt (1 = what uniform
    attention gives it), so that a modality with more tokens is not read as attended more. Raw masses
    would measure token counts: image tokens are most of the organisms' prompts (the paper had 256-1024
    against about 10 text tokens)."""
    vision, vision_se = series(results, RATIO, "decoder.last_attn_ratio.vision")
    text, text_se = series(results, RATIO, "decoder.last_attn_ratio.text")
    depth = len(vision)
    k = final_count(depth, results.get("family"))
    if depth - k < 1:
        return {
            "ours": f"{depth} layers",
            "spread": None,
            "verdict": NOT_COMPARABLE,
            "reason": f"{depth} decoder layers leave no layers before the final ones",
        }
    gap_se = vision_se + text_se
    text_wins = int(((text - vision) > Z * gap_se).sum())
    vision_wins = int(((vision - text) > Z * gap_se).sum())
    before, before_se = mean_with_bound(vision[: depth - k], vision_se[: depth - k])
    final, final_se = mean_with_bound(vision[depth - k :], vision_se[depth - k :])
    rise_se = before_se + final_se
    finals = f"the final {k} layers" if k > 1 else "the final layer"
    ours = (
        f"per token, text above vision in {text_wins} of {depth} layers; vision's mass over its token share "
        f"{pm(before, before_se, '.2f')} before {finals}, {pm(final, final_se, '.2f')} in "
        f"{'them' if k > 1 else 'it'} (1 = uniform attention)"
    )
    rise = final - before
    resolved = abs(rise) > max(Z * rise_se, FLOOR)
    if most(text_wins, depth) and rise > 0 and resolved:
        verdict, reason = (
            HOLDS,
            f"per token, text dominates {text_wins} of {depth} layers and vision rises by {rise:.2f} "
            f"(times the uniform share) in {finals}",
        )
    elif vision_wins >= depth / 2 or (rise < 0 and resolved):
        verdict = FAILS
        reason = (
            f"per token, vision dominates {vision_wins} of {depth} layers"
            if vision_wins >= depth / 2
            else f"vision attention falls by {-rise:.2f} (times the uniform share) in {finals} (> {Z:g} s.e.)"
        )
    else:
        verdict = UNRESOLVED
        reason = (
            f"per token, text dominates {text_wins} of {depth} layers; vision changes by {rise:+.2f} "
            f"(times the uniform share) in {finals} (s.e. ≤ {rise_se:.2g}; floor {FLOOR:g})"
        )
    return {
        "ours": ours,
        "spread": rise_se,
        "verdict": verdict,
        "reason": reason,
        "headlines": [
            headline(f"vision mass / token share, final {k} - earlier layers", rise, rise_se),
            headline(f"layers where text > vision per token (of {depth})", text_wins),
        ],
    }


def without_sink(results: dict) -> dict:
    """The results read without the first real token, as key and in the token counts (the sink control)."""
    out = copy.deepcopy(results)
    ratios = get_field(out, RATIO)
    for mod in ("vision", "text"):
        ratios[f"decoder.last_attn_ratio.{mod}"] = get_field(ratios, f"decoder.last_attn_ratio_nosink.{mod}")
    return out


CLAIM = Claim(
    "text-dominated-attention",
    "2.3",
    "Text-dominated attention, vision late",
    "The final token attends mostly to text; its attention to vision rises only in the final layers.",
    "04_attention_modality",
    text_dominated_attention,
    paper_words("section_2_3_attention"),
    alternatives=(Alternative(NOSINK, without_sink),),
    floor=FLOOR,
)


PAPER_QUADRANTS = "appendix_c_quadrants"  # the paper's Appendix C block means (vlmlib/paper/values)


def prepare(run) -> None:
    """The layer of the Appendix C quadrants (`quadrant_layer`, recorded with the parameters): the parameter
    where one is given, else the paper's layer 10 of 18 scaled to the depth (rounded half up, at most the
    last layer); it must be a decoder layer. Also the paper's quadrant values, all families and the layer
    it reports them at (run.extra["paper_quadrants"]), with the values that cannot be block means left
    out (NaN) and why (run.extra["paper_quadrants_impossible"]; `values.impossible_quadrants`)."""
    from ...params import as_int
    from ..values import impossible_quadrants, paper_values

    paper = paper_values(PAPER_QUADRANTS)
    impossible = {}
    for family, values in paper.items():
        if isinstance(values, dict) and (flagged := impossible_quadrants(values, family)):
            impossible[family] = flagged
            paper[family] = {q: float("nan") if q in flagged else v for q, v in values.items()}
    run.extra["paper_quadrants"] = paper
    run.extra["paper_quadrants_impossible"] = impossible
    depth, layer = run.lm.num_layers, run.params.get("quadrant_layer")
    if layer is None or str(layer).lower() == "none":
        layer = min(depth - 1, int(np.floor(paper["layer"] * depth / 18 + 0.5)))
    layer = as_int(layer, "quadrant_layer", minimum=0)
    if layer >= depth:
        raise ValueError(f"quadrant_layer {layer} is outside the decoder (layers 0..{depth - 1})")
    run.params["quadrant_layer"] = layer


def quadrant_means(obs, layer: int) -> dict[str, float]:
    """The mean attention weight in each query/key modality block ("vv", "vt", "tv", "tt": query modality
    first) at one decoder layer, averaged over samples: Appendix C's measure."""
    return {q: float(obs.mean(f"decoder.quadrant.{q}")[layer]) for q in QUADRANTS}


def vision_shift(vision_mass: np.ndarray, family: str | None = None) -> dict:
    """Where the final token's attention mass on image tokens (one value per layer) sits: its mean before
    the paper's final layers (`vlmlib.paper.groups.final_layers`) and in them, and the layer where it is
    largest."""
    k = final_count(len(vision_mass), family)
    return {
        "final_count": k,
        "before_final": float(vision_mass[:-k].mean()),
        "final": float(vision_mass[-k:].mean()),
        "peak_layer": int(vision_mass.argmax()),
    }


def within_own_modality(matrix: np.ndarray) -> bool:
    """Whether queries of both modalities put more weight on their own modality's keys than on the other's,
    in a 2x2 quadrant matrix (rows: vision, text queries; columns: vision, text keys)."""
    return bool(matrix[0, 0] > matrix[0, 1] and matrix[1, 1] > matrix[1, 0])


SPEC = ChapterSpec(
    "04_attention_modality",
    claims=(CLAIM,),
    readings=("attention",),
    side_by_side=SideBySide(
        "lines",
        lambda r: (
            {"mass on vision keys": series(r, "last_token", "decoder.last_attn.vision")},
            "final token's attention to vision",
        ),
        "The final token's attention mass on image tokens; dotted lines: the share a uniform attention "
        "would give.",
        ylim=(0, 1),
        reference=lambda r: r.get("vision_share_of_prompt"),
    ),
    prepare=prepare,
)
