"""Chapter 9, when text and image disagree (the paper's central claim, tested): the claim of textual
dominance and its rule, whether the model was ever trained with a textual prior to override, and the
readings the chapter's run makes of its hint experiment, logit lens, knockouts and patching.

The rule (`text_dominates`). The same images are asked with a false hint about the count ("There are 7
objects ." before the question). On each image, the answer follows the hint (+1), the image (-1) or
neither (0); the mean of these over images is the hint's lead, with its paired standard error. The
claim holds when the hint leads by more than Z = 2 s.e., does not hold when the image leads by more than
Z s.e., and is unresolved in between. Not comparable: a model never trained with hints in its prompts
(the `shapes` organisms: it has no prior to override), and a model that does not read the count from the
image without a hint (accuracy not resolved above chance: there is no visual evidence to override).
Alternative reading: the disagreements of one object only, where the image is least clear about which of
the two counts it shows; a verdict that changes there is "not robust".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...hints import writable
from ...models import named_model
from ...params import as_int
from ...stats import mean_se, proportion_se
from ..claims import NOT_COMPARABLE, Alternative, Claim, Z, compare, get_field, headline
from ..format import layer_list, percent, points
from ..spec import ChapterSpec, SideBySide

CHAPTER = "09_text_image_conflict"
KINDS = ("absent", "agree", "conflict")
KIND_NAMES = {"absent": "no hint", "agree": "a true hint", "conflict": "a false hint"}
KEY_NAMES = {"hint": "the hint's tokens", "image": "the image's tokens"}
PATCH_POSITIONS = ("hint", "image", "final")
POSITION_NAMES = {"hint": "hint tokens", "image": "image tokens", "final": "final position"}
NO_PRIOR_REASON = (
    "this organism never saw a textual hint in training: it has no prior to override, so its answers "
    "under a false hint say nothing about the claim"
)
SIZE_ONE = "only disagreements of one object"


# ---------------------------------------------------------------- did the model learn a textual prior?


def hint_training(model: str) -> dict:
    """{"seen": True / False / None, "why": ...}: whether the model was trained with hints in its prompts,
    read from the training log beside its weights (`training_log.json`, written by the organisms' recipes:
    a `hint_rate` above 0). None where no log says (a released checkpoint: trained on web text and
    captions, so it has language priors and stays comparable)."""
    named = named_model(model)
    folder = named.folder if named is not None else Path(model) if Path(model).is_dir() else None
    log_path = None if folder is None else Path(folder) / "training_log.json"
    if log_path is None or not log_path.is_file():
        return {"seen": None, "why": "no training log beside the weights: a checkpoint trained elsewhere"}
    try:
        config = json.loads(log_path.read_text()).get("config") or {}
    except (OSError, ValueError):
        return {"seen": None, "why": f"the training log {log_path.name} could not be read"}
    rate = config.get("hint_rate")
    if not rate:
        return {"seen": False, "why": "its training log records no hints in its prompts", "hint_rate": 0.0}
    return {
        "seen": True,
        "why": f"{rate:.0%} of its counting prompts in training carried a hint, "
        f"{config.get('hint_truth', float('nan')):.0%} of them true",
        "hint_rate": float(rate),
        "hint_truth": config.get("hint_truth"),
    }


# ---------------------------------------------------------------- the rule


def text_dominates(results: dict) -> dict:
    """The module docstring's rule, on the results' `preference.summary` (the hint experiment)."""
    summary = get_field(results, "preference", "summary")
    conflict, absent = get_field(summary, "conflict"), get_field(summary, "absent")
    hint, hint_se = conflict["follows_claim"], conflict["follows_claim_se"]
    image, image_se = conflict["correct"], conflict["correct_se"]
    lead, lead_se = conflict["claim_minus_image"], conflict["claim_minus_image_se"]
    alone, alone_se = absent["correct"], absent["correct_se"]
    ours = (
        f"under a false hint {percent(hint, hint_se)} of answers follow the hint and "
        f"{percent(image, image_se)} the image (the hint's lead {points(lead, lead_se)}, {conflict['n']} "
        "images); without a hint "
        f"{percent(alone, alone_se)} correct"
    )
    headlines = [
        headline("answers that follow a false hint", hint, hint_se),
        headline("answers that follow the image under a false hint", image, image_se),
        headline("accuracy without a hint", alone, alone_se),
    ]
    found = {"ours": ours, "spread": lead_se, "headlines": headlines}
    training = results.get("hint_training") or {}
    if training.get("seen") is False:
        return {**found, "verdict": NOT_COMPARABLE, "reason": NO_PRIOR_REASON}
    chance = float(results.get("chance", 1 / 9))
    if alone - Z * alone_se <= chance:
        return {
            **found,
            "verdict": NOT_COMPARABLE,
            "reason": f"without a hint the model is right on {percent(alone, alone_se)} of images, not above "
            f"chance ({chance:.0%}): it does not read the count from the image, so there is no visual "
            "evidence for the text to override",
        }
    verdict, reason = compare(
        lead,
        lead_se,
        f"a false hint wins: {percent(hint)} of answers follow it against {percent(image)} that follow "
        "the image",
        f"the image wins: {percent(image)} of answers follow it against {percent(hint)} that follow the hint",
        f"the hint and the image each win about as often ({points(lead, lead_se)}, within {Z:g} s.e.)",
    )
    return {**found, "verdict": verdict, "reason": reason}


def size_one_only(results: dict) -> dict:
    """The results read on the disagreements of one object only."""
    one = get_field(results, "preference", "by_disagreement", "1")
    preference = dict(get_field(results, "preference"))
    preference["summary"] = {**get_field(preference, "summary"), "conflict": one}
    return {**results, "preference": preference}


CLAIM = Claim(
    "text-dominates",
    "Abstract, Conclusion",
    "Text overrides the image",
    "Textual dominance: linguistic priors can override conflicting visual evidence.",
    CHAPTER,
    text_dominates,
    lambda family: "stated as a consequence of late retrieval (abstract, conclusion); not measured",
    alternatives=(Alternative(SIZE_ONE, size_one_only),),
)


def _side_by_side(results: dict) -> tuple[dict, str]:
    summary = get_field(results, "preference", "summary")
    bars = {
        f"right, {KIND_NAMES[kind]}": (summary[kind]["correct"], summary[kind]["correct_se"])
        for kind in KINDS
    }
    bars["follows a false hint"] = (
        summary["conflict"]["follows_claim"],
        summary["conflict"]["follows_claim_se"],
    )
    return bars, "share of answers"


# ---------------------------------------------------------------- the run


def prepare(run) -> None:
    """What the model learnt (`hint_training`, in run.extra) and the samples it can answer: those whose
    true and conflicting counts it writes as tokens of their own (the `shapes` organisms know 1-6 only);
    the ids of the others in run.extra["left_out"]."""
    run.params["knockout_samples"] = as_int(
        run.params.get("knockout_samples", 100), "knockout_samples", minimum=1
    )
    run.params["counterfactual_pairs"] = as_int(
        run.params.get("counterfactual_pairs", 64), "counterfactual_pairs", minimum=0
    )
    run.extra["hint_training"] = (
        hint_training(str(run.params["model"]))
        if run.lm.trained
        else {"seen": None, "why": "nothing: its weights are random"}
    )
    kept, left_out = writable(run.lm, run.samples)
    if not kept:
        raise ValueError(
            f"none of the {len(run.samples)} samples has a true and a conflicting count that "
            f"{run.lm.name} writes as a token of its own"
        )
    run.samples, run.extra["left_out"] = kept, left_out


def lens_curves(lens_logits: dict[str, np.ndarray]) -> dict:
    """From {kind: (states, n, 2) logits of (true count, conflicting count)}: per kind the mean and s.e.
    of the logit difference at every state, and the paired conflict-minus-agreement difference."""
    diff = {kind: v[..., 0] - v[..., 1] for kind, v in lens_logits.items()}
    out = {}
    for kind, d in diff.items():
        stats = [mean_se(row) for row in d]
        out[kind] = {"mean": [m for m, _ in stats], "sem": [s for _, s in stats]}
    paired = [mean_se(row) for row in diff["conflict"] - diff["agree"]]
    out["conflict_minus_agree"] = {"mean": [m for m, _ in paired], "sem": [s for _, s in paired]}
    return out


def lens_summary(curves: dict) -> dict:
    """The states where a false hint first moves the answer (the conflict run's logit difference below the
    agreement run's by more than Z paired s.e.) and from which it leads (the conflict run's difference
    below 0 by more than Z s.e. at that state and every later one); None where it never does."""
    moved = curves["conflict_minus_agree"]
    first_moved = next((l for l, (m, s) in enumerate(zip(moved["mean"], moved["sem"])) if m < -Z * s), None)
    mean, sem = np.array(curves["conflict"]["mean"]), np.array(curves["conflict"]["sem"])
    leads = mean < -Z * sem
    first_lead = next((l for l in range(len(leads)) if leads[l:].all()), None)
    return {
        "first_moved_state": first_moved,
        "hint_leads_from_state": first_lead,
        "last_state": {k: curves[k]["mean"][-1] for k in KINDS},
        "last_state_se": {k: curves[k]["sem"][-1] for k in KINDS},
    }


def knockout_rows(result, true_ids: np.ndarray, claimed_ids: np.ndarray) -> list[dict]:
    """Per knockout of the conflict runs: the shares of answers that are right and that follow the hint,
    with their binomial s.e., and their changes from the clean run with paired s.e."""
    clean_top1, knocked_top1 = result.predictions()
    clean = {"correct": clean_top1 == true_ids, "follows": clean_top1 == claimed_ids}
    out = []
    for ko, top1 in zip(result.knockouts, knocked_top1):
        row = {"keys": ko.keys, "queries": ko.queries, "scheme": ko.scheme, "layers": list(ko.layers)}
        row["label"] = ko.label
        for measure, knocked in (("correct", top1 == true_ids), ("follows", top1 == claimed_ids)):
            row[measure], row[f"{measure}_se"] = proportion_se(knocked.astype(float))
            row[f"clean_{measure}"], _ = proportion_se(clean[measure].astype(float))
            change = knocked.astype(float) - clean[measure].astype(float)
            row[f"delta_{measure}"], row[f"delta_{measure}_se"] = mean_se(change)
        out.append(row)
    return out


def read_by(rows: list[dict], keys: str, num_layers: int) -> int:
    """The first layer l from which hiding `keys` in every layer from l on leaves the share of answers
    that follow the hint within noise of the clean run (a change of at most 5 points or 2 paired s.e.):
    what those keys give the answer has been read by layer l. `num_layers` when even the last is needed."""
    onwards = sorted(
        (r for r in rows if r["keys"] == keys and r["scheme"] == "onwards"), key=lambda r: r["layers"][0]
    )
    first = num_layers
    for r in reversed(onwards):
        if abs(r["delta_follows"]) > max(0.05, Z * r["delta_follows_se"]):
            break
        first = r["layers"][0]
    return first


def recovery_grid(rows: list[dict]) -> tuple[list[int], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(layers, {position: recovery per layer}, {position: s.e.}) of the counterfactual rows."""
    layers = sorted({r["layer"] for r in rows})
    mean = {p: np.full(len(layers), np.nan) for p in PATCH_POSITIONS}
    se = {p: np.full(len(layers), np.nan) for p in PATCH_POSITIONS}
    for r in rows:
        i = layers.index(r["layer"])
        mean[r["positions"]][i], se[r["positions"]][i] = r["recovery"], r["recovery_se"]
    return layers, mean, se


def carried(rows: list[dict], threshold: float = 0.5) -> dict[str, list[int]]:
    """Per position class, the layers whose patch recovers at least `threshold` of the agreement run's
    logit difference, resolved (mean minus Z s.e. above it)."""
    layers, mean, se = recovery_grid(rows)
    return {
        p: [layers[i] for i in range(len(layers)) if mean[p][i] - Z * se[p][i] >= threshold] for p in mean
    }


def _size_phrase(by_size: dict) -> str:
    sizes = [d for d in sorted(by_size, key=int) if by_size[d]["n"] >= 10]
    if not sizes:
        return "There are too few images of any one disagreement size to compare sizes."
    parts = [
        f"{percent(by_size[d]['follows_claim'], by_size[d]['follows_claim_se'])} when it is off by {d} "
        f"({by_size[d]['n']} images)"
        for d in sizes
    ]
    return "By the size of the disagreement, the hint is followed " + "; ".join(parts) + "."


def conclusion_points(results: dict, num_layers: int) -> list[str]:
    """What this run shows, one sentence a point, most telling first (the page's conclusion takes the
    first four as prose and puts the rest behind a toggle), every number with its spread."""
    summary = results["preference"]["summary"]
    c, a, g = summary["conflict"], summary["absent"], summary["agree"]
    lead = [
        f"Under a false hint, {percent(c['follows_claim'], c['follows_claim_se'])} of the answers follow the "
        f"hint and {percent(c['correct'], c['correct_se'])} follow the image ({c['n']} images), a lead of "
        f"{points(c['claim_minus_image'], c['claim_minus_image_se'])} for the hint."
    ]
    more = [
        f"The same images are answered right {percent(a['correct'], a['correct_se'])} of the time "
        f"without a hint and {percent(g['correct'], g['correct_se'])} with a true one; without a hint the "
        f"model names the false hint's count on {percent(a['follows_claim'], a['follows_claim_se'])} of them."
    ]
    training = results.get("hint_training") or {}
    if training.get("seen") is False:
        lead.append(
            "This model never saw a hint in training, so its answers under a hint show what unfamiliar words "
            "do to it, not a learnt prior."
        )
    lead.append(_size_phrase(results["preference"]["by_disagreement"]))
    lens = results.get("lens_summary")
    if lens:
        moved, leads = lens["first_moved_state"], lens["hint_leads_from_state"]
        when = f"after {moved} of {num_layers} layers" if moved is not None else "at no depth we can resolve"
        lead.append(
            "Read by the logit lens at the final position, the false hint first pulls the answer towards "
            f"its count {when}"
            + ("" if leads is None else f", and its count leads from then on (after {leads} layers)")
            + "."
        )
        more.append(
            "The logit lens's difference between the true and the false count at the last state is "
            f"{lens['last_state']['conflict']:+.2f} ± {lens['last_state_se']['conflict']:.2f} under the "
            f"false hint and {lens['last_state']['agree']:+.2f} ± {lens['last_state_se']['agree']:.2f} under "
            "the true one."
        )
    ko = results.get("knockout_rows")
    if ko:
        whole = {
            k: next(r for r in ko if r["keys"] == k and r["scheme"] == "onwards" and r["layers"][0] == 0)
            for k in KEY_NAMES
        }
        read = read_by(ko, "hint", num_layers)
        lead.append(
            "Hiding the hint's words from the rest of the prompt in every layer brings the answers that "
            f"follow it from {percent(whole['hint']['clean_follows'])} to "
            f"{percent(whole['hint']['follows'], whole['hint']['follows_se'])}, and "
            + (
                "that change is within the noise: the answer does not need the hint."
                if read == 0
                else f"hiding them only from layer {read} on changes nothing we can resolve: the hint is "
                f"read in the first {read} layers."
                if read < num_layers
                else "even the last layer still reads the hint."
            )
        )
        more.append(
            "Hiding the image instead, in every layer, leaves "
            f"{percent(whole['image']['follows'], whole['image']['follows_se'])} following the hint and "
            f"{percent(whole['image']['correct'], whole['image']['correct_se'])} right (with the hint "
            f"hidden: {percent(whole['hint']['correct'], whole['hint']['correct_se'])} right)."
        )
    cf = results.get("counterfactual", {}).get("rows")
    if cf:
        where = carried(cf)
        parts = [
            f"at the {POSITION_NAMES[p]} in {layer_list(where[p])}"
            if where[p]
            else f"nowhere at the {POSITION_NAMES[p]}"
            for p in PATCH_POSITIONS
        ]
        more.append(
            f"Writing the agreement run's residual stream into the conflict run ({cf[0]['n']} pairs) brings "
            "back at least half of the true count's lead (resolved) " + "; ".join(parts) + "."
        )
    return lead + more


SPEC = ChapterSpec(
    CHAPTER,
    claims=(CLAIM,),
    side_by_side=SideBySide(
        "bars",
        _side_by_side,
        "The share of answers that are right with no hint, a true hint and a false hint, and the share that "
        "follow a false hint; bars ±1 s.e. over images.",
    ),
    prepare=prepare,
)
