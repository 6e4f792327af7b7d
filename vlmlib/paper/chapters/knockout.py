"""Chapter 8, attention knockout (beyond the paper: section 2.3 tested causally): the claim, its rule, the
side-by-side curves, and what the chapter's run needs (its window, the final layers, the sweep's summary
and bullets)."""

from __future__ import annotations

import numpy as np

from ...interventions.knockout import QUERY_SETS, SCHEMES, critical_layers
from ...params import as_int
from .. import groups
from ..claims import FAILS, HOLDS, UNRESOLVED, Alternative, Claim, Z, get_field, headline
from ..format import layer_list, percent
from ..knockout import QUERY_NAMES, signed
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
    ours = (
        f"critical layers from all text positions: {layer_list(critical)}; from the final position: "
        f"{layer_list(final_queries) if final_queries is not None else '-'}; final layers: "
        f"{layer_list(final_layers)}"
    )
    early = [layer for layer in critical if layer not in final_layers]
    knocked = get_field(text, "final_layers_knockout")
    spread = knocked.get("knocked_acc_se")
    headlines = [
        headline("critical layers before the final layers", len(early)),
        headline(
            f"accuracy, image hidden from text in the final layers ({layer_list(final_layers)})",
            knocked.get("knocked_acc"),
            spread,
        ),
    ]
    if early:
        return {
            "ours": ours,
            "spread": spread,
            "verdict": FAILS,
            "headlines": headlines,
            "reason": f"hiding the image in {layer_list(early)} alone, "
            "before the final layers, costs accuracy: the image is read there",
        }
    if not critical:
        return {
            "ours": ours,
            "spread": spread,
            "verdict": UNRESOLVED,
            "headlines": headlines,
            "reason": "no single layer is needed: the reading is spread over layers that cover for "
            "each other",
        }
    return {
        "ours": ours,
        "spread": spread,
        "verdict": HOLDS,
        "headlines": headlines,
        "reason": f"only the final layers ({layer_list(critical)}) are needed to read the image",
    }


CLAIM = Claim(
    "retrieve-late",
    "2.3, Conclusion (tested by knockout)",
    "Text reads the image late",
    "Text reads the image only in the final layers: cross-modal attention from text to vision matters "
    "only in the final transformer blocks.",
    "08_knockout",
    retrieve_late,
    lambda family: (
        "text-to-vision attention negligible in early layers, significant only in the final "
        "blocks (attention readings, no intervention)"
    ),
)


LENS_THRESHOLD = 0.9  # "decodable": top-1 accuracy at least this share of the last layer's
TUNED = "with a tuned lens"


def lens_accuracy(results: dict, lens: str = "logit") -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, s.e.) of the answer read at the final position from every state H^(0) .. H^(L)."""
    rows = [r for r in get_field(results, "lens", lens, "rows") if r["read"] == "final"]
    rows.sort(key=lambda r: r["layer"])
    return np.array([r["correct"] for r in rows], float), np.array([r["correct_se"] for r in rows], float)


def answer_late(results: dict) -> dict:
    """The conclusion's "retrieval in later layers", read from the answer itself: the logit lens decodes
    the final position's residual stream after every layer with the model's own head. Holds when the
    answer is not yet decodable before the final layers run (top-1 accuracy at their input, H^(f) for the
    first final layer f, is below 0.9 of the last layer's by more than 2 s.e.); does not hold when it is
    already decodable there (at or above, by more than 2 s.e.); unresolved in between. Checked again
    with a tuned lens (a per-layer affine map fitted on held-out samples), which also reads states whose
    basis differs from the output's."""
    accuracy, se = lens_accuracy(results, results.get("_lens", "logit"))
    depth = len(accuracy) - 1
    final = groups.final_layers(depth, results.get("family"))
    first = final[0]
    bar = LENS_THRESHOLD * accuracy[-1]
    before, before_se = float(accuracy[first]), float(se[first])
    decodable = next((layer for layer in range(depth + 1) if (accuracy[layer:] >= bar).all()), None)
    ours = (
        f"answer top-1 at the final layers' input (state {first}): {percent(before, before_se)}; "
        f"after the last layer: {accuracy[-1]:.0%}; decodable (≥ {LENS_THRESHOLD:.0%} of that) from state "
        f"{decodable if decodable is not None else '-'}"
    )
    headlines = [headline("lens top-1 before the final layers", before, before_se)]
    if accuracy[-1] <= 0:
        verdict, reason = UNRESOLVED, "the model never answers correctly: nothing to decode"
    elif before + Z * before_se < bar:
        verdict, reason = (
            HOLDS,
            (f"the answer is not decodable before the final layers ({before:.0%} against {bar:.0%} needed)"),
        )
    elif before - Z * before_se >= bar:
        verdict, reason = (
            FAILS,
            (
                f"the answer is already decodable before the final layers ({before:.0%} ≥ {bar:.0%}), "
                f"from state {decodable}"
            ),
        )
    else:
        verdict, reason = UNRESOLVED, f"top-1 {percent(before, before_se)} against {bar:.0%}: within 2 s.e."
    return {"ours": ours, "spread": before_se, "verdict": verdict, "reason": reason, "headlines": headlines}


def with_tuned_lens(results: dict) -> dict:
    get_field(results, "lens", "tuned", "rows")
    return {**results, "_lens": "tuned"}


LENS_CLAIM = Claim(
    "answer-late",
    "Conclusion (read by the logit lens)",
    "The answer forms late",
    "Visual information is used for the answer only in later layers: the answer is retrieved when the "
    "textual processing is near completion.",
    "08_knockout",
    answer_late,
    lambda family: "retrieval in the final layers (inferred from attention and patching; no lens)",
    alternatives=(Alternative(TUNED, with_tuned_lens),),
)


def _side_by_side(results: dict) -> tuple[dict, str]:
    curves = {}
    for label, queries in (("from all text positions", "text"), ("from the final position", "final")):
        layer = get_field(results, "per_layer", queries, "layer")
        curves[label] = (np.asarray(layer["knocked_acc"], float), np.asarray(layer["knocked_acc_se"], float))
    return curves, "top-1 accuracy, image hidden in one layer"


# ---------------------------------------------------------------- the run: its window, summary and bullets


def prepare(run) -> None:
    """The sliding window's size (`window`, recorded with the parameters): the parameter where one is given,
    else the size of the paper's layer groups at this depth (as many layers as the final ones)."""
    window = run.params.get("window")
    if window is None:
        window = len(groups.final_layers(run.lm.num_layers, run.lm.family.name))
    window = as_int(window, "window", minimum=1)
    run.params["window"] = window


def final_layers(num_layers: int, family: str | None = None) -> list[int]:
    """The paper's "final layers", where it places retrieval (`vlmlib.paper.groups.final_layers`)."""
    return list(groups.final_layers(num_layers, family))


def attention_mass(obs) -> dict:
    """Chapter 4's reading beside the knockouts, per query set: (mean, s.e. over samples) per layer of
    the attention mass on the image tokens, of the final token ("final") and averaged over text queries
    ("text")."""
    return {
        "final": (obs.mean("decoder.last_attn.vision"), obs.sem("decoder.last_attn.vision")),
        "text": (obs.mean("decoder.quadrant_mass.tv"), obs.sem("decoder.quadrant_mass.tv")),
    }


def not_needed_from(result, queries: str, num_layers: int) -> int:
    """The first layer l from which every "onwards" knockout (blocking layers l..L-1) leaves accuracy within
    noise of the clean run (a drop of at most 5 points or 2 paired s.e.): the image has been read by layer l.
    `num_layers` when even the last layer alone is needed."""
    onwards = result.select(queries, "onwards")
    fine = [-r["delta_acc"] <= max(0.05, 2 * r["delta_acc_se"]) for r in onwards]
    first = num_layers
    for r, ok in zip(reversed(onwards), reversed(fine)):
        if not ok:
            break
        first = r["layers"][0]
    return first


def _final_layers_row(result, queries: str, num_layers: int, family: str | None) -> dict:
    """The knockout of the final layers onwards (layers final_layers(L)[0]..L-1) from `queries`."""
    first = final_layers(num_layers, family)[0]
    return next(r for r in result.select(queries, "onwards") if r["layers"][0] == first)


def sweep_summary(result, mass: dict, num_layers: int, family: str | None = None) -> dict:
    """What the chapter records under "summary" (and its claim's rule reads): the clean accuracy, the final
    layers, and per query set the critical single layers (`critical_layers`), the layer whose knockout
    lowers log p most, where attention to the image peaks (`mass`, from `attention_mass`), the first layer
    from which the image is no longer needed (`not_needed_from`), the knockout of the final layers, and
    the single layers with smaller but resolved drops in log p (below -0.1 nats and beyond 2 paired s.e.)."""
    single = {q: result.select(q, "layer") for q in QUERY_SETS}
    out = {
        "clean_acc": single["text"][0]["clean_acc"],
        "target": result.target,
        "final_layers": final_layers(num_layers, family),
    }
    for queries in QUERY_SETS:
        critical = critical_layers(single[queries])
        worst = min(single[queries], key=lambda r: r["delta_logprob"])
        peak = int(np.argmax(mass[queries][0]))
        late = _final_layers_row(result, queries, num_layers, family)
        smaller = [
            r
            for r in single[queries]
            if r["layers"][0] not in critical
            and r["delta_logprob"] < -0.1
            and -r["delta_logprob"] > 2 * r["delta_logprob_se"]
        ]
        out[queries] = {
            "critical_layers": critical,
            "worst_layer": worst["layers"][0],
            "attention_peak_layer": peak,
            "attention_peak_mass": float(mass[queries][0][peak]),
            "not_needed_from_layer": not_needed_from(result, queries, num_layers),
            "final_layers_knockout": {
                m: late[m] for m in ("knocked_acc", "knocked_acc_se", "delta_logprob", "delta_logprob_se")
            },
            "smaller_effects": [r["layers"][0] for r in smaller],
        }
    return out


def _acc_pm(r: dict) -> str:
    return percent(r["knocked_acc"], r["knocked_acc_se"])


def _layer_bullets(result, summary: dict, queries: str, num_layers: int) -> list[str]:
    """The two bullets of one query set: the critical single layers against where attention peaks, then
    the knockout of the final layers and from which layer on the image is no longer needed."""
    s, single = summary[queries], result.select(queries, "layer")
    worst, late, read_by = single[s["worst_layer"]], s["final_layers_knockout"], s["not_needed_from_layer"]
    where = ", ".join(f"{layer} ({_acc_pm(single[layer])})" for layer in s["critical_layers"]) or "none"
    also = (
        "; smaller but resolved drops in log p at "
        + ", ".join(
            f"layer {layer} ({signed(single[layer]['delta_logprob'])} ± "
            f"{single[layer]['delta_logprob_se']:.2f})"
            for layer in s["smaller_effects"]
        )
        if s["smaller_effects"]
        else ""
    )
    k_final = len(summary["final_layers"])
    last_layers = f"final {k_final} layers" if k_final > 1 else "final layer"
    return [
        f"Blocked {QUERY_NAMES[queries]}: single layers whose knockout costs more than 20 points of "
        f"accuracy (and more than 2 s.e.): {where}{also}. The largest drop in log p is at layer "
        f"{worst['layers'][0]} (Δ log p {signed(worst['delta_logprob'])} ± {worst['delta_logprob_se']:.2f} "
        f"nats), while attention to the image peaks at layer {s['attention_peak_layer']} "
        f"({s['attention_peak_mass']:.0%} of the mass).",
        f"{QUERY_NAMES[queries].capitalize()}: blocking the {last_layers} (the paper's retrieval layers, "
        f"scaled to {num_layers} layers) leaves {_acc_pm(late)} accuracy (Δ log p "
        f"{signed(late['delta_logprob'])} ± {late['delta_logprob_se']:.2f}); "
        + (
            f"blocking every layer from {read_by} on stays within noise of the clean run, so the image has "
            f"been read by layer {read_by}."
            if read_by < num_layers
            else "every 'onwards' knockout, even of the last layer alone, costs accuracy: the answer "
            "still reads the image in the last layer."
        ),
    ]


def conclusion_points(result, summary: dict, num_layers: int) -> list[str]:
    """The bullets of "What this run shows", from the sweep and its summary (`sweep_summary`): the clean
    run, per query set the critical layers against where attention peaks and the final layers' knockout,
    and the question-only baseline (the image hidden from every text position in every layer)."""
    points = [
        f"Clean run: top-1 accuracy {summary['clean_acc']:.0%} on {result.n_samples} samples "
        + (
            "(the dataset answer)."
            if result.target == "answer"
            else "(the clean run's top-1 token, so 100% by construction)."
        )
    ]
    for queries in QUERY_SETS:
        points += _layer_bullets(result, summary, queries, num_layers)
    points = [*points[1:2], points[0], *points[2:]]  # the first says where the answer reads the image
    tokens = getattr(result, "answer_tokens", 1)
    if tokens > 1:
        points.append(
            f"Answers of up to {tokens} tokens are scored whole: teacher-forced after the prompt, log "
            "p(answer) is the sum over its tokens and an answer is correct when greedy decoding gives "
            "every token; the knockouts of the final position cover every position that predicts an "
            "answer token. The logit lens reads the answer's first token, at the final prompt position."
        )
    everything = next(r for r in result.select("text", "onwards") if r["layers"][0] == 0)
    points.append(
        f"With the image invisible to every text position in every layer the model answers "
        f"from the question alone: {_acc_pm(everything)} accuracy (the question-only baseline; a "
        f"partial knockout can do worse, when what still reaches the answer misleads it)."
    )
    return points


def per_layer(result) -> dict:
    """The sweep's measures as curves, {queries: {scheme: {measure: [one value per knockout]}}}, in the
    order of the sweep (a window or onwards knockout at its first layer)."""
    measures = (
        "knocked_acc",
        "knocked_acc_se",
        "delta_acc",
        "delta_acc_se",
        "delta_logprob",
        "delta_logprob_se",
        "delta_logit_diff",
        "delta_logit_diff_se",
    )
    return {
        q: {scheme: {m: [r[m] for r in result.select(q, scheme)] for m in measures} for scheme in SCHEMES}
        for q in QUERY_SETS
    }


SPEC = ChapterSpec(
    "08_knockout",
    claims=(CLAIM, LENS_CLAIM),
    side_by_side=SideBySide(
        "lines",
        _side_by_side,
        "Top-1 accuracy when the image is hidden from all text positions (solid) or from the final position "
        "(dashed) in one layer only; a dip marks a layer where the answer reads the image; bands ±1 s.e.",
        ylim=(0, 1.03),
    ),
    prepare=prepare,
)
