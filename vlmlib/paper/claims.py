"""What holds: the machinery of the rules that test the paper's claims on a chapter's results dict.

Each claim and its rule live in the spec of the chapter that answers it (`vlmlib.paper.chapters`); this
module holds what they share. Every rule reads the results file a chapter wrote (``run.finish``) and
returns a finding::

    {claim_id, claim, section, chapter, family, paper, ours, spread, verdict, reason, anchor, headlines}

``headlines`` are the claim's numbers as numbers, ``[{label, value, se}]`` (``se`` None where the
statistic has none), so that runs can be compared: the training-seed replicates (`vlmlib.book.seeds`) report
each headline's spread across seeds beside its standard error across samples.

``verdict`` is one of VERDICTS:

- "holds": the organism shows the paper's pattern, resolved by the rule below;
- "does not hold": the organism shows the opposite pattern, resolved;
- "not comparable on these models": the organisms cannot answer the question (too few layers, a
  saturated answer where the paper's target sat at 15-20 nats of loss, no paper table for the family);
- "unresolved": the difference is inside the noise, the evidence is mixed, or the results file lacks the
  fields the rule needs (then the reason names them);
- "not robust": the verdict changes under a stated alternative reading (`Claim.all_alternatives`), for
  example without the inert last layer; the reason gives both verdicts;
- "seed-dependent": organisms trained by the same recipe with other seeds disagree (`across_seeds`).

Across training seeds. Where the organisms were trained with several seeds and every chapter ran on each,
a claim's verdict is decided on every seed by the rules below, and the headline verdict is the seeds'
common verdict: it holds only if it holds in every seed, does not hold only if it fails in every seed,
and is "seed-dependent" as soon as two seeds disagree. Each seed's own verdict stays in the per-seed
table.

Effect-size floors. A resolved difference must also be large enough to matter (`Claim.floor`, in the
units of the claim's first headline): 0.01 of cosine similarity for the similarity drop (2.1), 0.1 of the
uniform share for the final token's attention (2.3). Where no floor is stated, the Z-standard-error
test alone decides.

The inert last layer. The last decoder layer's output at image positions feeds nothing: no later layer
reads it and no loss trains it (only the final position's output reaches the logits), in the organisms
and in the paper's models alike. A claim whose rule reads a per-layer series of image-token states
(``Claim.last_layer_series``) is judged twice, on every layer and without the last one; the two must
agree.

The rules, shared by all claims:

- A difference counts when |estimate| > Z standard errors (Z = 2). Where a quantity is a mean of
  several per-layer means, its standard error is bounded from above by the mean of their standard
  errors (the standard deviation of a sum is at most the sum of the standard deviations, whatever the
  correlation between layers), and the standard error of a difference by the sum of the two: the
  rules are conservative, never optimistic.
- Patching comparisons (chapters 3 and 7) use the chapter's own regime-robust measure
  (``verdict_measure``) and, for chapter 3, its Holm-corrected comparison (``comparison[*].counted``).
- The terms ("the final layers", "early" and "late", "most layers") have one definition each, in
  `vlmlib.paper.groups`: the final layers are section 2.2's final group (the paper's literal last three
  at its depths, 18 and 28; ceil(3 L / 18) at another depth L), "most layers" more than half of them.

The paper's numbers come from vlmlib/paper/values/*.json; none is typed here. Where the paper reports a
claim for PaliGemma-3B only, the same rule is applied to every family and the paper column says so.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..data.samples import QUESTION as PAPER_QUESTION
from .values import family_values

HOLDS, FAILS, NOT_COMPARABLE, UNRESOLVED, NOT_ROBUST, SEED_DEPENDENT = (
    "holds",
    "does not hold",
    "not comparable on these models",
    "unresolved",
    "not robust",
    "seed-dependent",
)
VERDICTS = (HOLDS, FAILS, SEED_DEPENDENT, NOT_ROBUST, NOT_COMPARABLE, UNRESOLVED)
Z = 2.0  # a difference counts when it exceeds Z standard errors
SATURATED_LOSS = 0.01  # nats: a clean answer this certain cannot move up; the paper's sat at 15-20 nats
CONCLUSION = "what-this-run-shows"  # the heading every chapter ends with (anchor of its section)


# The rules in prose, for the What-holds page: what a scientist needs to judge a verdict in two minutes.
RULES = """\
**What a verdict says.** Each claim of the paper is turned into a measurable pattern and tested on every
model the book ran. A claim *holds* when the organism shows the paper's pattern and the difference is
resolved; it *does not hold* when the organism shows the opposite, resolved; it is *unresolved* when the
difference is within the noise or the evidence is mixed; *not comparable on these models* when the
organism cannot pose the question (too few layers for the paper's groups, an answer so certain that the
paper's measure has no room to move, no paper value for the family), with the reason.

**Resolved.** A difference counts when it exceeds two standard errors across samples, and, where the
claim states one, an effect-size floor (0.01 of cosine similarity for the similarity drop, a tenth of
the uniform share for attention). Where a number is the mean of several layers, its standard error is
bounded from above by the mean of the layers' standard errors, so the test can only be too cautious.
Patching chapters compare log-probabilities of the answer, which mean the same for a saturated organism
and for the paper's models, after a Holm correction over the rows compared.

**The terms.** "The final layers" are the paper's last three layers at its depths (18 layers for
PaliGemma-3B, 28 for Qwen2-VL-2B) and the same three of eighteen scaled up at any other depth (two of
the organisms' eight). "Early" and "late" in section 2.1 split the layers after the paper's tenth of
eighteen. "Most layers" means more than half. One definition of each is used by every rule, table and
page.

**Robust.** A verdict must survive the other reasonable readings of the same numbers. The last layer's
output at image positions feeds nothing (no later layer reads it and no loss trains it), so claims
about image tokens across layers are judged with and without it. Attention by modality is judged per
token (mass over the modality's share of the prompt, so that many image tokens are not read as much
attention) and again without the first token, where attention sinks form. A verdict that changes under
one of these readings is *not robust*, and the reason gives both.

**Across training seeds.** Where the organisms were trained by the same recipe with several seeds, a
claim holds only if it holds in every seed and does not hold only if it fails in every seed; when seeds
disagree it is *seed-dependent*. The per-seed verdicts and numbers stay in the tables under each claim.
"""


class MissingField(Exception):
    """The results file lacks something a rule needs (an older chapter, or a partial run)."""


@dataclass(frozen=True)
class Alternative:
    """Another reasonable reading of the same results: the claim's rule is applied to `transform(results)`
    too, and a verdict that changes under it is "not robust"."""

    name: str  # how the page names it: "without the last layer"
    transform: Callable[[dict], dict]  # results -> results read the other way (a copy)


@dataclass(frozen=True)
class Claim:
    claim_id: str
    section: str  # the paper's section, as a reader finds it
    title: str  # a short name for headings
    claim: str  # the paper's claim, in one sentence
    chapter: str  # the chapter whose results file the rule reads
    rule: Callable[[dict], dict]  # results -> {ours, spread, verdict, reason}
    paper: Callable[[str], str]  # family -> the paper's number or words for this claim
    anchor: str = CONCLUSION
    # results paths of the per-layer summaries ({mean, sem, ...} over decoder layers) the rule reads at
    # image positions: the claim is judged without the inert last layer too (see the module docstring)
    last_layer_series: tuple[tuple[str, ...], ...] = ()
    alternatives: tuple[Alternative, ...] = ()  # further readings the verdict must survive
    floor: float = 0.0  # smallest difference that counts, in the units of the first headline
    # Whether the paper's numbers for this claim hold only for its task (the counting question and its
    # answer): a claim that reads the answer, the final position or the question's tokens. On a run that
    # asked another question its verdict is "not comparable" (`other_task_reason`); a claim about how
    # image tokens are processed (False) is still judged, and its reason says what was asked.
    task_dependent: bool = True

    def all_alternatives(self) -> tuple[Alternative, ...]:
        if not self.last_layer_series:
            return self.alternatives
        drop = Alternative(WITHOUT_LAST_LAYER, lambda r: without_last_layer(r, self.last_layer_series))
        return (drop, *self.alternatives)


# ---------------------------------------------------------------- small helpers


def get_field(results: dict, *path):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise MissingField("results lack " + ".".join(str(p) for p in path))
        value = value[key]
    return value


def series(results: dict, *path) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sem) arrays of a per-layer summary {mean, sem, ...}; NaN where a value is null."""
    summary = get_field(results, *path)
    mean = np.array([np.nan if v is None else v for v in get_field(summary, "mean")], dtype=float)
    raw_sem = summary.get("sem")  # lists in a results file, arrays when a chapter passes its live dict
    sem = np.array(
        [np.nan] * len(mean) if raw_sem is None else [np.nan if v is None else v for v in raw_sem],
        dtype=float,
    )
    if mean.size == 0 or np.isnan(mean).all():
        raise MissingField("results hold no values for " + ".".join(path))
    return mean, np.nan_to_num(sem, nan=0.0)


def mean_with_bound(mean: np.ndarray, sem: np.ndarray) -> tuple[float, float]:
    """Mean of per-layer means and the conservative bound on its standard error (mean of the s.e.)."""
    return float(np.mean(mean)), float(np.mean(sem))


def reported_for(name: str, family: str) -> tuple[dict, str]:
    """The paper's values for this family, else PaliGemma's with a note (the claim is tested on every
    family)."""
    own = family_values(name, family)
    if own and "not shown" not in own.get("words", ""):
        return own, ""
    return family_values(name, "paligemma"), "PaliGemma-3B only: "


def compare(diff: float, se: float, yes: str, no: str, noise: str, floor: float = 0.0) -> tuple[str, str]:
    """Verdict of a signed difference whose positive sign is the paper's pattern: resolved beyond Z standard
    errors and at least `floor` in size (else unresolved, and the reason says which test it missed)."""
    if abs(diff) > Z * se and abs(diff) < floor:
        why = f"beyond {Z:g} s.e., but below the effect-size floor {floor:g}"
        return UNRESOLVED, f"a difference of {diff:+.3g}: {why}"
    if diff > Z * se:
        return HOLDS, yes
    if diff < -Z * se:
        return FAILS, no
    return UNRESOLVED, noise


def across_seeds(verdicts: dict[int, str]) -> tuple[str, str]:
    """The headline verdict of a claim over training seeds {seed: verdict} (module docstring): the common
    verdict, or "seed-dependent" with each verdict's seeds."""
    distinct = list(dict.fromkeys(verdicts[s] for s in sorted(verdicts)))
    n = len(verdicts)
    if len(distinct) == 1:
        return distinct[0], f"{distinct[0]} in {'both' if n == 2 else f'all {n}'} training seeds"
    by = {v: [s for s in sorted(verdicts) if verdicts[s] == v] for v in distinct}
    parts = [f"{v} in seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}" for v, s in by.items()]
    return SEED_DEPENDENT, f"the {n} training seeds disagree: " + "; ".join(parts)


def layers_phrase(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}-{last}"


def headline(label: str, value, se=None) -> dict:
    """One headline number of a claim (see the module docstring)."""
    return {
        "label": label,
        "value": None if value is None else float(value),
        "se": None if se is None or not math.isfinite(float(se)) else float(se),
    }


# ---------------------------------------------------------------- the paper's side, from paper_values


def paper_words(name: str) -> Callable[[str], str]:
    def text(family: str) -> str:
        values, note = reported_for(name, family)
        return note + (values.get("words") or "not reported")

    return text


def table_ranges(table: dict) -> str:
    by = {}
    for r in table["rows"]:
        by.setdefault(r["modality"], []).append(r["delta"])
    return "; ".join(f"{m} Δ logit {min(v):+.2f} to {max(v):+.2f}" for m, v in by.items())


# ---------------------------------------------------------------- the rules


def patching_rows(results: dict) -> tuple[str, list[dict]]:
    measure = results.get("verdict_measure")
    if not measure:
        raise MissingField("results lack 'verdict_measure' (the chapter predates the regime-robust measures)")
    rows = get_field(results, "rows")
    if not rows or measure not in rows[0] or f"{measure}_se" not in rows[0]:
        raise MissingField(f"rows lack {measure!r} and its standard error")
    return measure, rows


def paper_condition(rows: list[dict]) -> str:
    conditions = {r.get("condition", "answer") for r in rows}
    return "low-rank" if "low-rank" in conditions else "answer"


def saturated(rows: list[dict]) -> float | None:
    losses = [r["clean_loss"] for r in rows if r.get("clean_loss") is not None]
    median = float(np.median(losses)) if losses else None
    return median if median is not None and median < SATURATED_LOSS else None


def other_task_reason(task: dict, short: bool = False) -> str:
    """Why a run's task is not the paper's: what it asked (`vlmlib.paper.run.task_of`'s record). `short`:
    the first sentence only (for a page's header)."""
    questions = task.get("questions") or []
    n = task.get("n_questions", len(questions))
    if n == 1 and questions:
        asked = f"this run asked “{questions[0]}”"
    else:
        shown = ", ".join(f"“{q}”" for q in questions[:2])
        asked = f"this run asked {n} different questions ({shown}{', ...' if n > 2 else ''})"
    asked += f", not the paper's counting question “{PAPER_QUESTION}”"
    if short:
        return asked[0].upper() + asked[1:]
    return asked + ": the paper's numbers for this claim are of its task, its answer and its prompt"


WITHOUT_LAST_LAYER = "without the last layer"
UNTRAINED_REASON = (
    "the model has random weights (a test model or a stand-in of a real checkpoint's structure): its numbers "
    "show the method at work, not a finding, so no verdict is given"
)


def without_last_layer(results: dict, paths) -> dict:
    """A copy of `results` whose per-layer summaries at `paths` end one layer earlier, as if the model
    ended before its last layer (the rules then place their groups on the layers left)."""
    out = copy.deepcopy(results)
    for path in paths:
        summary = get_field(out, *path)
        depth = len(get_field(summary, "mean"))
        for key, value in summary.items():
            if isinstance(value, (list, np.ndarray)) and len(value) == depth:
                summary[key] = value[:-1]
    if isinstance(out.get("num_layers"), int):
        out["num_layers"] -= 1
    return out


ALTERNATIVE_WHY = {WITHOUT_LAST_LAYER: "whose output at image positions nothing reads"}


def _robustness(claim: Claim, results: dict, found: dict) -> dict:
    """The finding, checked under each alternative reading of the claim (`Claim.all_alternatives`): "not
    robust" when one gives another verdict. An alternative that cannot be judged (too few layers left, a
    reading the results lack) leaves the verdict as it is; every check is recorded under "alternatives"."""
    alternatives = claim.all_alternatives()
    if not alternatives or found["verdict"] == NOT_COMPARABLE:
        return found
    checks, changed = [], []
    for alternative in alternatives:
        try:
            other = claim.rule(alternative.transform(results))
        except MissingField as missing:
            other = {"verdict": NOT_COMPARABLE, "reason": str(missing)}
        checks.append(
            {"alternative": alternative.name, "verdict": other["verdict"], "reason": other["reason"]}
        )
        if other["verdict"] not in (found["verdict"], NOT_COMPARABLE):
            why = ALTERNATIVE_WHY.get(alternative.name)
            changed.append(
                f"{other['verdict']} {alternative.name}{', ' + why if why else ''} ({other['reason']})"
            )
    found = {**found, "alternatives": checks}
    if not changed:
        return found
    return {
        **found,
        "verdict": NOT_ROBUST,
        "reason": f"{found['verdict']} as measured ({found['reason']}), but " + "; ".join(changed),
    }


def evaluate(claim: Claim, results: dict | None, family: str = "") -> dict:
    """One claim's finding on one chapter's results (None: the chapter did not run)."""
    family = (results or {}).get("family") or family
    base = {
        "claim_id": claim.claim_id,
        "claim": claim.claim,
        "section": claim.section,
        "chapter": claim.chapter,
        "family": family,
        "anchor": f"{claim.chapter}#{claim.anchor}",
        "paper": claim.paper(family),
        "headlines": [],
    }
    if results is None:
        return {
            **base,
            "ours": "-",
            "spread": None,
            "verdict": UNRESOLVED,
            "reason": f"chapter {claim.chapter} has no results file (not run)",
        }
    try:
        found = claim.rule(results)
    except MissingField as missing:
        return {**base, "ours": "-", "spread": None, "verdict": UNRESOLVED, "reason": str(missing)}
    if found["verdict"] not in VERDICTS:
        raise ValueError(f"rule {claim.claim_id} returned an unknown verdict {found['verdict']!r}")
    if results.get("trained") is False:  # a random-weight model (a test model or a stand-in)
        return {**base, **found, "verdict": NOT_COMPARABLE, "reason": UNTRAINED_REASON}
    task = results.get("task") or {}
    if task.get("paper_task") is False:  # another question than the paper's (older files: the paper's)
        if claim.task_dependent:
            return {**base, **found, "verdict": NOT_COMPARABLE, "reason": other_task_reason(task)}
        asked = other_task_reason(task, short=True)
        why = f"{asked[0].lower()}{asked[1:]}; this claim is about image tokens, not the answer"
        found = {**found, "reason": f"{found['reason']} ({why})"}
    return {**base, **_robustness(claim, results, found)}
