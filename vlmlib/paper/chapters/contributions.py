"""Chapter 2, attention vs MLP contributions (paper Appendix B, Figures 5-8): the claim, its rule, the
summary beside the paper, the side-by-side curves."""

from __future__ import annotations

import numpy as np

from ..claims import (
    FAILS,
    HOLDS,
    UNRESOLVED,
    Claim,
    Z,
    headline,
    mean_with_bound,
    reported_for,
    series,
)
from ..groups import final_count
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
            (lo, hi), covered, where = (
                p["attn_share_until_late_layers"],
                depth - final_count(depth, family),
                "before the final layers",
            )
        else:  # the paper says it in words only: attention contributes more than the MLP
            (lo, hi), covered, where = (
                WORDS_ATTENTION_DOMINANT,
                depth - final_count(depth, family),
                "before the final layers",
            )
        parts.append(f"{modality}: {lo:.0%}-{hi:.0%} ({where})")
        m, s = mean[: max(1, covered)], sem[: max(1, covered)]
        inside = (m >= lo) & (m <= hi)
        outside = (m < lo - Z * s) | (m > hi + Z * s)
        n = len(m)
        ours.append(
            f"{modality}: {m.min():.0%}-{m.max():.0%}, {int(inside.sum())} of {n} layers in range "
            f"(s.e. ≤ {s.max():.1%})"
        )
        spreads.append(float(s.max()))
        headlines.append(
            headline(f"attention share, {modality} (mean of layers 0-{n - 1})", *mean_with_bound(m, s))
        )
        if inside.sum() > n / 2:
            verdicts.append((HOLDS, f"{modality} in range in {int(inside.sum())} of {n} layers"))
        elif outside.sum() >= n / 2:
            verdicts.append(
                (FAILS, f"{modality} outside the range by > {Z:g} s.e. in {int(outside.sum())} of {n} layers")
            )
        else:
            verdicts.append(
                (
                    UNRESOLVED,
                    f"{modality}: {int(inside.sum())} of {n} layers in range, "
                    f"{int(outside.sum())} clearly outside",
                )
            )
    names = [v for v, _ in verdicts]
    verdict = FAILS if FAILS in names else UNRESOLVED if UNRESOLVED in names else HOLDS
    return {
        "ours": "; ".join(ours),
        "spread": max(spreads),
        "verdict": verdict,
        "reason": "; ".join(r for _, r in verdicts),
        "headlines": headlines,
    }


CLAIM = Claim(
    "attention-share",
    "Appendix B",
    "Attention's share of the update",
    "Attention's share of the update to the residual stream lies in the paper's range in most layers.",
    "02_contributions",
    attention_share,
    _paper_attention_share,
    last_layer_series=(("decoder", "decoder.attn_share.vision"), ("decoder", "decoder.attn_share.text")),
)


def summary(obs, modality: str) -> dict:
    """The chapter's numbers for one modality's tokens ("vision" or "text"), beside the paper's words:
    attention's share of the update (eq. 7, per token) over most layers (all but the last), the MLP's share
    at the final layer with its standard error, the MLP's norm before and at the final layer, the layer
    where the MLP adds most, and the layers where attention adds more than the MLP."""
    share = obs.mean(f"decoder.attn_share.{modality}")
    mlp = obs.mean(f"decoder.mlp_norm.{modality}")
    return {
        "attn_share_range_most_layers": [float(share[:-1].min()), float(share[:-1].max())],
        "mlp_share_final_layer": float(1 - share[-1]),
        "mlp_share_final_layer_sem": float(obs.sem(f"decoder.attn_share.{modality}")[-1]),
        "mlp_norm_before_final_max": float(mlp[:-1].max()),
        "mlp_norm_final_layer": float(mlp[-1]),
        "mlp_peak_layer": int(mlp.argmax()),
        "attn_dominant_layers": [int(i) for i in np.flatnonzero(share > 0.5)],
    }


def paper_cell(paper: dict, key: str) -> str:
    """The paper's value for one row of the comparison table, as text ("–" where it gives none): `key` is
    "share" (attention's share in most layers, or until the late layers), "final" (the MLP's share at the
    final layer) or "norm" (the MLP's norm before the final layer -> at it); `paper` is one modality's
    values (appendix_b_contributions, for the run's family)."""
    if key == "share":
        ref = paper.get("attn_share_most_layers") or paper.get("attn_share_until_late_layers")
        return f"{ref[0]:.0%}-{ref[1]:.0%}" if ref else "–"
    if key == "final":
        if "mlp_share_final_layer_min" not in paper:
            return "–"
        return f"over {paper['mlp_share_final_layer_min']:.0%}"
    if "mlp_norm_final_layer" in paper:
        before = (
            f"about {paper['mlp_norm_layer_7']} (layer 7)"
            if "mlp_norm_layer_7" in paper
            else f"about {paper.get('mlp_norm_before_final', '–')}"
        )
        return f"{before} → about {paper['mlp_norm_final_layer']}"
    return "–"


SPEC = ChapterSpec(
    "02_contributions",
    claims=(CLAIM,),
    readings=("contributions", "update", "vision_tower"),
    side_by_side=SideBySide(
        "lines",
        lambda r: (
            {
                "vision tokens": series(r, "decoder", "decoder.attn_share.vision"),
                "text tokens": series(r, "decoder", "decoder.attn_share.text"),
            },
            "attention's share of the update",
        ),
        "Attention's share ‖Δattn‖ / (‖Δattn‖ + ‖ΔMLP‖), vision (solid) and text (dashed) tokens; "
        "bands ±1 s.e.",
        ylim=(0, 1),
    ),
)
