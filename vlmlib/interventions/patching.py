"""Activation patching: one routine for every site, position set and family.

A clean run records the activations of the source sites; a second run writes them over the target
sites, pairing source and target layers in order (sources 2,3,4 onto targets 15,16,17: 2->15, 3->16,
4->17), only at the chosen positions; everything else flows on as the model computes it.

    patches = [Patch("attn", sources=(2, 3, 4), targets=(5, 6, 7), positions="text", label="early->mid"),
               Patch("vision", sources=(2, 3, 4), targets=(24, 25, 26), label="2-4")]
    result = patch_experiment(lm, samples, patches, batch_size=8)
    result.rows()      # per condition and patch: logit, log-probability, logit difference, top-1,
                       # each +- s.e.

Sites (kinds of `vlmlib.families`):
    attn         what attention adds to the residual in decoder layer l (its output, after any post-norm)
    resid        the output of decoder layer l (H^(l+1) in the paper's notation)
    vision       the output of vision-tower layer l; the tower has only image patches, so its position
                 set is always "all" (Qwen2-VL's packed (patches, width) layout included)
    vision_attn  what attention adds to the vision tower's residual in layer l (Appendix D.2's reading)
    deepstack    Qwen3-VL only: the vision features DeepStack adds to the residual after decoder layer l
                 (l < 3 in the released checkpoints), zero outside the image positions

Positions (decoder sites): "vision" (image tokens), "text" (real non-image tokens of the prompt, the
final one included), "all" (every real prompt token). Padding is never written, nor are the answer
tokens appended to score a multi-token answer (they only read).

Targets and conditions. A *condition* says which text is scored at the final position:
    "answer"    the dataset's answer (or, with target="top1" or no answers, the clean top-1 token);
    "low-rank"  the paper-like condition: a wrong answer, which a model that does the task ranks low.
                The rule is deterministic and independent of the model: the next answer in the
                sorted answer set, the largest wrapping to the smallest (for counts 1..6: 3 -> 4,
                6 -> 1; see `answer_set`). Choosing by the clean model's own ranking instead would
                select targets for being extreme, and any perturbation would move them back. The
                paper's targets sat at 15-20 nats of loss, where the organisms' answers sit near 0:
                a logit can only fall from a saturated answer, so signs of logit shifts are not
                comparable between the regimes; the low-rank condition is their counterpart.

Measures, per sample, clean and patched (for an answer of k tokens, teacher-forced after the prompt):
    logit       the first answer token's logit at the final prompt position (the paper's "score")
    logprob     log p(answer | prompt), the sum over the k tokens; loss = -logprob (cross-entropy)
    logit_diff  the answer token's logit minus the best other token's, the smallest over the k tokens
                (> 0 exactly when greedy decoding reproduces the answer)
    correct     every answer token is the top-1 prediction (top-1 accuracy)
With one-token answers (the organisms' counts) no token is appended: the numbers are those of a
single forward pass over the prompt.

Several patches run in one forward pass: the batch is repeated once per patch along the batch
dimension (Qwen2-VL's packed patches along the patch dimension), and block k receives patch k.
The clean run happens once per batch, for all patches; a patched run skips every block before its
first target and resumes from the clean run's state there (decoder-only stacks skip the vision tower
too), which gives the same logits (tests/test_lean_patching.py) for a fraction of the compute when the
targets sit in the last layers. Every patch is validated before any forward pass; a patch that would
write a layer with its own output, or a duplicate of another patch, is refused (they would be no-op or
duplicate rows).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..layers import GroupError, check_pair
from ..observation import DEFAULT_MAX_TOKENS_PER_BATCH
from ..params import as_names
from ..stats import mean_se, proportion_se
from ..trace import Trace, site
from ..util import span
from .resume import (
    POSITION_SETS,
    CleanRun,
    ResumeAt,
    final_logits,
    logits_at,
    repeat_inputs,
    resume_plan,
    run_clean,
    with_positions,
)

PATCH_KINDS = ("attn", "resid", "vision", "vision_attn", "deepstack")  # deepstack: a family's own (Qwen3-VL)
TOWER_KINDS = ("vision", "vision_attn")  # sites of the vision tower: every patch, no position set
TARGET_MODES = ("auto", "answer", "top1")
CONDITIONS = ("answer", "low-rank")


class PatchConfigError(GroupError):
    """A patch that cannot run (unknown site, bad positions, layer groups that do not pair)."""


@dataclass(frozen=True)
class Patch:
    """One patching configuration."""

    kind: str  # site kind: "attn", "resid", "vision", "vision_attn" (Qwen3-VL: also "deepstack")
    sources: tuple[int, ...]  # source layers (0-based), read in the clean run
    targets: tuple[int, ...]  # target layers (0-based), overwritten in the patched run; paired in order
    positions: str = "all"  # decoder positions written: "vision", "text" or "all"; vision tower: "all"
    label: str = ""  # e.g. "early->mid" or "2-4"; shown in tables, joins with the paper's rows

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(target site, source site) for each paired layer."""
        return [(site(self.kind, t), site(self.kind, s)) for s, t in zip(self.sources, self.targets)]

    @property
    def name(self) -> str:
        label = f"{self.label}: " if self.label else ""
        return f"{label}{self.kind} {span(self.sources)} -> {span(self.targets)} @ {self.positions}"


def check_patches(lm, patches: Iterable[Patch]) -> list[Patch]:
    """The patches with normalised fields, or a PatchConfigError; runs no forward pass.

    Refused: unknown sites or position sets, layers outside the model, groups that do not pair, a
    layer that is both source and target (a self-patch: a no-op row), and two identical patches
    (a duplicate row)."""
    patches = list(patches)
    if not patches:
        raise PatchConfigError("no patches given")
    out, seen = [], {}
    for i, p in enumerate(patches):
        if not isinstance(p, Patch):
            raise PatchConfigError(f"patch {i} is a {type(p).__name__}, not a Patch")
        what = f"patch {i} ({p.label or p.kind})"
        patchable = tuple(k for k in PATCH_KINDS if k in lm.family.site_kinds())
        if p.kind not in patchable:
            raise PatchConfigError(f"{what}: cannot patch site kind {p.kind!r}; patchable kinds: {patchable}")
        if p.positions not in POSITION_SETS:
            raise PatchConfigError(
                f"{what}: unknown position set {p.positions!r}; use one of {POSITION_SETS}"
            )
        positions = p.positions
        if p.kind in TOWER_KINDS:
            if positions == "text":
                raise PatchConfigError(f"{what}: the vision tower has no text positions; use positions='all'")
            positions = "all"  # the tower holds only image patches
            depth, where = lm.num_vision_layers, "vision tower"
        else:  # a family's own kind may have fewer layers (DeepStack: the first three)
            depth, where = lm.family.site_layers(lm.model, p.kind), "decoder"
        try:
            sources, targets = check_pair(p.sources, p.targets, depth, what, where)
        except GroupError as e:
            raise PatchConfigError(str(e)) from None
        patch = Patch(p.kind, sources, targets, positions, p.label)
        key = (patch.kind, patch.sources, patch.targets, patch.positions)
        if key in seen:
            raise PatchConfigError(
                f"{what} repeats patch {seen[key]} ({patch.name}): it would be a duplicate row"
            )
        seen[key] = i
        out.append(patch)
    return out


# ---------------------------------------------------------------- forward passes


def patch_resume_sites(lm, patches: Iterable[Patch]) -> list[str]:
    """The clean states a lean patched run of any stack of `patches` may resume from."""
    out = [site("vision", lm.num_vision_layers - 1)]  # a decoder-only stack skips the whole tower
    for p in patches:
        first = min(p.targets)
        if first > 0:
            out.append(site("vision" if p.kind in TOWER_KINDS else "resid", first - 1))
    return list(dict.fromkeys(out))


def patch_skip_plan(lm, patches: Sequence[Patch], clean: CleanRun) -> list[tuple[str, int]]:
    """`resume_plan` of this stack: what a lean patched run may skip."""
    tower = [p for p in patches if p.kind in TOWER_KINDS]
    first_tower = min((min(p.targets) for p in tower), default=lm.num_vision_layers)
    first_decoder = None if tower else min(min(p.targets) for p in patches)
    return resume_plan(lm, clean, first_decoder, first_tower)


@torch.no_grad()
def run_patched(
    lm, inputs, patches: Sequence[Patch], clean: CleanRun, record: Iterable[str] = (), lean: bool = True
):
    """One forward pass of len(patches) copies of the batch, copy k patched by patches[k].

    Returns (logits (n_patches, batch, [k,] vocab) where the clean run read them, {site: recorded
    value}) where a recorded decoder site is (n_patches, batch, seq, width) and a vision site is its
    blocks stacked. `patches` must be validated and `clean` must hold their source sites.
    `lean`: skip the blocks before the first target, resuming from the clean run's state where it
    recorded one (`resume_sites`); never when sites are recorded (they may lie in skipped blocks).
    """
    n = len(patches)
    plan: dict[str, list[tuple[int, str, torch.Tensor | None]]] = {}
    for k, p in enumerate(patches):
        mask = None if p.kind in TOWER_KINDS else clean.masks[p.positions]
        for target, source in p.pairs:
            if source not in clean.activations:
                raise KeyError(f"the clean run did not record {source!r}, a source of {p.name}")
            plan.setdefault(target, []).append((k, source, mask))

    def edit(name, value):
        if name not in plan:
            return value
        if value.shape[0] % n:
            raise RuntimeError(f"{name}: leading size {value.shape[0]} is not {n} blocks")
        blocks = value.reshape(n, value.shape[0] // n, *value.shape[1:]).clone()
        for k, source, mask in plan[name]:
            src = clean.activations[source].to(blocks.dtype)
            if mask is None:
                blocks[k] = src
            else:
                blocks[k] = torch.where(mask.unsqueeze(-1), src, blocks[k])
        return blocks.reshape(value.shape)

    record = list(record)
    big = repeat_inputs(with_positions(lm, inputs), n)
    skips = patch_skip_plan(lm, patches, clean) if lean and not record else []
    with ResumeAt(lm, skips, clean, n), Trace(lm, [*plan, *record], edit=edit, clone=False) as tr:
        if clean.read_at is None:
            logits = final_logits(lm, big)
        else:
            logits = logits_at(lm, big, clean.read_at.repeat(n, 1))
    recorded = {s: tr[s].reshape(n, tr[s].shape[0] // n, *tr[s].shape[1:]) for s in record}
    return logits.reshape(n, -1, *logits.shape[1:]), recorded


# ---------------------------------------------------------------- targets


def answer_tokens(lm, text: str) -> list[int]:
    """The tokens of an answer as the tokenizer splits it on its own (Qwen2 splits "10" into "1", "0")."""
    if hasattr(lm, "answer_token_ids"):
        return lm.answer_token_ids(text)
    ids = lm.processor.tokenizer.encode(str(text), add_special_tokens=False)
    if not ids:
        raise ValueError(f"answer {text!r} encodes to no token")
    return list(ids)


def answer_set(samples: Sequence) -> list[str]:
    """The answers the low-rank rule chooses from: when every answer is an integer (a count), every
    integer from the smallest to the largest answer seen (a count missing from a small sample is still
    a possible wrong count); otherwise the distinct answers, sorted."""
    answers = {str(s.answer) for s in samples if getattr(s, "answer", None) not in (None, "")}
    if answers and all(a.lstrip("-").isdigit() for a in answers):
        numbers = [int(a) for a in answers]
        return [str(n) for n in range(min(numbers), max(numbers) + 1)]
    return sorted(answers)


def next_answer(answer: str, answers: Sequence[str]) -> str:
    """The low-rank target: the answer after `answer` in the sorted answer set, the last wrapping to the
    first."""
    answers = list(answers)
    if len(answers) < 2:
        raise ValueError(
            f"the low-rank condition needs at least two different answers to choose a wrong one; "
            f"the answer set is {answers}"
        )
    if str(answer) not in answers:
        raise ValueError(f"answer {answer!r} is not in the answer set {answers}")
    return answers[(answers.index(str(answer)) + 1) % len(answers)]


def resolve_conditions(samples: Sequence, conditions, target: str = "auto") -> list[str]:
    """'auto': the answer condition, and the low-rank one when every sample has an answer and there are
    at least two different answers (and target is not 'top1'); an explicit list (or comma-separated
    text) is checked."""
    has_answers = all(getattr(s, "answer", None) not in (None, "") for s in samples)
    if conditions == "auto":
        low_rank = has_answers and target != "top1" and len(answer_set(samples)) >= 2
        return ["answer", "low-rank"] if low_rank else ["answer"]
    if isinstance(conditions, str):  # "answer", or "answer,low-rank" as a command line gives it
        conditions = [c.strip() for c in conditions.split(",") if c.strip()]
    conditions = list(dict.fromkeys(conditions))
    for c in conditions:
        if c not in CONDITIONS:
            raise ValueError(f"unknown condition {c!r}; use 'auto' or a list from {CONDITIONS}")
    if not conditions:
        raise ValueError(f"no condition given; use 'auto' or a list from {CONDITIONS}")
    if "low-rank" in conditions:
        if not has_answers:
            raise ValueError(
                "condition 'low-rank' needs an answer for every sample (it scores a wrong answer); "
                "use conditions=['answer'] or 'auto' for data without answers"
            )
        if target == "top1":
            raise ValueError(
                "condition 'low-rank' scores a wrong dataset answer; it cannot go with target='top1'"
            )
    return conditions


def target_ids(lm, samples: Sequence, clean_logits: torch.Tensor, target: str) -> tuple[torch.Tensor, str]:
    """First target token per sample, and which rule chose it ("answer" or "top1")."""
    if target not in TARGET_MODES:
        raise ValueError(f"unknown target {target!r}; use one of {TARGET_MODES}")
    has_answers = all(getattr(s, "answer", None) not in (None, "") for s in samples)
    if target == "answer" and not has_answers:
        raise ValueError("target='answer' but some samples have no answer; use target='top1' or 'auto'")
    if target == "top1" or not has_answers:
        return clean_logits.argmax(dim=-1), "top1"
    ids = [lm.token_id(s.answer) for s in samples]
    return torch.tensor(ids, device=clean_logits.device), "answer"


def condition_targets(
    lm, samples: Sequence, clean_logits: torch.Tensor, condition: str, target: str, answers: Sequence[str]
) -> tuple[list[list[int]], list[str | None], str]:
    """(token ids per sample, target text per sample (None for a top-1 token), rule) of a condition."""
    if condition == "low-rank":
        texts = [next_answer(s.answer, answers) for s in samples]
        return [answer_tokens(lm, t) for t in texts], texts, "next answer"
    ids, rule = target_ids(lm, samples, clean_logits, target)
    if rule == "top1":
        return [[int(i)] for i in ids.tolist()], [None] * len(samples), "top1"
    texts = [str(s.answer) for s in samples]
    return [answer_tokens(lm, t) for t in texts], texts, "answer"


# ---------------------------------------------------------------- measures


def token_measures(logits: torch.Tensor, ids: torch.Tensor):
    """(target logit, cross-entropy loss, top-1 correct) per row; logits (..., vocab), ids (batch,)."""
    ids = ids.expand(logits.shape[:-1])
    logit = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    loss = torch.logsumexp(logits, dim=-1) - logit
    correct = logits.argmax(dim=-1) == ids
    return logit, loss, correct


def sequence_measures(
    logits: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample measures of teacher-forced answers.

    logits (..., batch, k, vocab): the logits that predict answer token j at [..., j, :]; ids (batch, k)
    the answer tokens; valid (batch, k) which of the k slots hold a token (answers differ in length).
    Returns logit (first token), logprob (sum), logit_diff (smallest margin over the tokens), correct
    (all tokens top-1), each (..., batch)."""
    ids = ids.expand(logits.shape[:-1])
    valid = valid.expand(logits.shape[:-1])
    logit, loss, correct = token_measures(logits, ids)
    others = logits.scatter(-1, ids.unsqueeze(-1), float("-inf")).amax(dim=-1)
    margin = logit - others
    return {
        "logit": logit[..., 0],
        "logprob": -(loss * valid).sum(dim=-1),
        "logit_diff": margin.masked_fill(~valid, float("inf")).amin(dim=-1),
        "correct": (correct | ~valid).all(dim=-1),
    }


def pad_tokens(sequences: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, valid), each (batch, k): token sequences right-padded to one length, `valid` the real ones."""
    k = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), k, dtype=torch.long, device=device)
    valid = torch.zeros(len(sequences), k, dtype=torch.bool, device=device)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, device=device)
        valid[i, : len(s)] = True
    return ids, valid


def teacher_forced_inputs(lm, batch: Sequence, prompt_inputs, texts: Sequence[str], tokens: list[list[int]]):
    """The batch encoded with each sample's target text as the answer (the family's own answer
    encoding: PaliGemma's suffix, causal over the answer; Qwen2-VL's assistant turn), and
    (read_at (batch, k) positions whose logits predict the answer tokens, prompt mask (batch, seq)).

    Checks that the prompt is encoded as without an answer and that the answer tokens are where and
    what the tokenizer says; otherwise the scores would not be of this prompt and answer."""
    inputs = lm.encode([s.image for s in batch], [s.question for s in batch], list(texts))
    inputs.pop("labels", None)
    ids = inputs["input_ids"]
    prompt_len = prompt_inputs["attention_mask"].sum(dim=1)
    read_at = torch.zeros(len(batch), max(len(t) for t in tokens), dtype=torch.long, device=ids.device)
    for i, (n, toks) in enumerate(zip(prompt_len.tolist(), tokens)):
        prompt_ids = prompt_inputs["input_ids"][i, :n]
        if (
            ids.shape[1] < n + len(toks)
            or not torch.equal(ids[i, :n], prompt_ids)
            or ids[i, n : n + len(toks)].tolist() != list(toks)
        ):
            raise ValueError(
                f"sample {i}: encoding the prompt with the answer {texts[i]!r} does not give the prompt's "
                "tokens followed by the answer's; this family's answer encoding cannot score "
                "multi-token answers"
            )
        positions = list(range(n - 1, n - 1 + len(toks)))  # position j predicts answer token j
        read_at[i, : len(positions)] = torch.tensor(positions)
        read_at[i, len(positions) :] = positions[-1]  # padding slots: read any valid position, masked later
    seq = torch.arange(ids.shape[1], device=ids.device)
    prompt_mask = seq.unsqueeze(0) < prompt_len.unsqueeze(1)
    return inputs, read_at, prompt_mask


MEASURE_NAMES = ("logit", "logprob", "logit_diff", "correct")


@dataclass
class ConditionMeasures:
    """Per-sample measures of one condition: clean (n_samples,) and patched (n_patches, n_samples)."""

    rule: str  # "answer", "top1" or "next answer": how the target was chosen
    clean: dict[str, np.ndarray]
    patched: dict[str, np.ndarray]
    answer_tokens: np.ndarray  # (n_samples,) tokens scored per sample

    def per_sample(self, k: int) -> dict[str, np.ndarray]:
        c, p = self.clean, {m: v[k] for m, v in self.patched.items()}
        return {
            "clean": c["logit"],
            "patched": p["logit"],
            "delta": p["logit"] - c["logit"],
            "clean_loss": -c["logprob"],
            "patched_loss": -p["logprob"],
            "delta_loss": c["logprob"] - p["logprob"],
            "clean_logprob": c["logprob"],
            "patched_logprob": p["logprob"],
            "delta_logprob": p["logprob"] - c["logprob"],
            "clean_logit_diff": c["logit_diff"],
            "patched_logit_diff": p["logit_diff"],
            "delta_logit_diff": p["logit_diff"] - c["logit_diff"],
            "clean_acc": c["correct"].astype(float),
            "patched_acc": p["correct"].astype(float),
            "delta_acc": p["correct"].astype(float) - c["correct"].astype(float),
        }


# Measures summarised as a proportion (binomial s.e.); every other one as a mean (its s.e.; for a
# delta, the paired s.e. of the per-sample differences).
PROPORTIONS = ("clean_acc", "patched_acc")
MEASURES = (
    "clean",
    "patched",
    "delta",
    "clean_loss",
    "patched_loss",
    "delta_loss",
    "clean_logprob",
    "patched_logprob",
    "delta_logprob",
    "clean_logit_diff",
    "patched_logit_diff",
    "delta_logit_diff",
    "clean_acc",
    "patched_acc",
    "delta_acc",
)


def is_noop(measures: ConditionMeasures, k: int, tol: float = 1e-5) -> bool:
    """Patch k changed no sample's scores beyond float round-off (stacked batches may sum in another
    order, so a patch that cannot reach the final position still moves its numbers by ~1e-7)."""
    for m in ("logit", "logprob", "logit_diff"):
        clean, patched = measures.clean[m], measures.patched[m][k]
        finite = np.isfinite(clean) & np.isfinite(patched)
        if not np.array_equal(np.isfinite(clean), np.isfinite(patched)):
            return False
        if np.any(np.abs(patched[finite] - clean[finite]) > tol * (1.0 + np.abs(clean[finite]))):
            return False
    return bool(np.array_equal(measures.clean["correct"], measures.patched["correct"][k]))


@dataclass
class PatchResult:
    """Per-sample measures of every patch under each condition; `rows()` summarises them."""

    patches: list[Patch]
    conditions: dict[str, ConditionMeasures]  # "answer" first
    answers: list[str] = field(default_factory=list)  # the answer set the low-rank rule used
    seconds: float = 0.0

    @property
    def n_samples(self) -> int:
        return len(next(iter(self.conditions.values())).clean["logit"])

    @property
    def target(self) -> str:
        """How the answer condition's target was chosen: "answer" or "top1"."""
        return self.conditions["answer"].rule if "answer" in self.conditions else ""

    # the answer condition's arrays, by their old names
    def _answer(self, when: str, measure: str) -> np.ndarray:
        m = self.conditions["answer"]
        return (m.clean if when == "clean" else m.patched)[measure]

    clean_logit = property(lambda self: self._answer("clean", "logit"))
    clean_loss = property(lambda self: -self._answer("clean", "logprob"))
    clean_correct = property(lambda self: self._answer("clean", "correct"))
    patched_logit = property(lambda self: self._answer("patched", "logit"))
    patched_loss = property(lambda self: -self._answer("patched", "logprob"))
    patched_correct = property(lambda self: self._answer("patched", "correct"))

    def rows(self) -> list[dict]:
        """One dict per (condition, patch): its fields; for each measure its mean and `<measure>_se`
        (accuracies: the binomial s.e. of a proportion; deltas: the paired s.e.); `noop`: the patch
        left every sample's scores unchanged up to float round-off (`is_noop`)."""
        out = []
        for condition, measures in self.conditions.items():
            for k, p in enumerate(self.patches):
                row = {
                    "label": p.label,
                    "kind": p.kind,
                    "positions": p.positions,
                    "sources": list(p.sources),
                    "targets": list(p.targets),
                    "n": self.n_samples,
                    "target": measures.rule,
                    "condition": condition,
                    "answer_tokens": int(measures.answer_tokens.max()),
                }
                values = measures.per_sample(k)
                for name in MEASURES:
                    summary = proportion_se if name in PROPORTIONS else mean_se
                    row[name], row[name + "_se"] = summary(values[name])
                row["noop"] = is_noop(measures, k)
                out.append(row)
        return out

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "conditions": {c: m.rule for c, m in self.conditions.items()},
            "answer_set": self.answers,
            "n_samples": self.n_samples,
            "seconds": self.seconds,
            "rows": self.rows(),
        }


def _measure(lm, batch, inputs, clean, patches, conditions, target, answers, per_pass):
    """{condition: (clean measures, patched measures, rule, tokens per sample)} for one batch."""
    out = {}
    shared = None  # patched logits at the final prompt position, shared by one-token conditions
    for condition in conditions:
        tokens, texts, rule = condition_targets(lm, batch, clean.logits, condition, target, answers)
        ids, valid = pad_tokens(tokens, clean.logits.device)
        if ids.shape[1] == 1:  # one token each: the prompt-only pass, read at the final position
            if shared is None:
                shared = torch.cat(
                    [
                        run_patched(lm, inputs, patches[j : j + per_pass], clean)[0]
                        for j in range(0, len(patches), per_pass)
                    ],
                    dim=0,
                )
            clean_logits, patched_logits = clean.logits.unsqueeze(1), shared.unsqueeze(2)
        else:  # teacher-forced answers: one more clean run and patched runs on prompt + answer
            big, read_at, prompt_mask = teacher_forced_inputs(lm, batch, inputs, texts, tokens)
            sources = list(clean.activations)
            forced = run_clean(lm, big, sources, read_at=read_at, prompt_mask=prompt_mask)
            clean_logits = forced.logits
            patched_logits = torch.cat(
                [
                    run_patched(lm, big, patches[j : j + per_pass], forced)[0]
                    for j in range(0, len(patches), per_pass)
                ],
                dim=0,
            )
        c = {k: v.cpu() for k, v in sequence_measures(clean_logits, ids, valid).items()}
        p = {k: v.cpu() for k, v in sequence_measures(patched_logits, ids, valid).items()}
        out[condition] = (c, p, rule, valid.sum(dim=1).cpu())
    return out


def patch_experiment(
    lm,
    samples: Sequence,
    patches: Iterable[Patch],
    batch_size: int = 8,
    target: str = "auto",
    max_rows: int = 32,
    conditions="answer",
    answers: Sequence[str] | None = None,
    max_tokens_per_pass: int | None = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> PatchResult:
    """Run every patch on every sample: clean run once per batch, patches stacked `max_rows` rows at a time.

    `target` (the answer condition): "answer" (the dataset's answer), "top1" (the clean run's top-1
    token) or "auto" (the answer when every sample has one, else top-1). `conditions`: "answer",
    "low-rank", a list of them, or "auto" (both when the samples have answers). `answers`: the answer
    set of the low-rank rule (default: the samples' distinct answers, `answer_set`). Measures are
    read at the final prompt position (and, for multi-token answers, at the teacher-forced answer
    positions). Stacking pays on a GPU; on a CPU compute grows with the rows, so a modest `max_rows`
    is as fast. `max_tokens_per_pass` bounds memory at full size: configurations are stacked only while
    copies x rows x padded length stay within it (one copy per pass at least; None: no bound).
    """
    patches = check_patches(lm, patches)  # every error before any forward pass
    if target not in TARGET_MODES:
        raise ValueError(f"unknown target {target!r}; use one of {TARGET_MODES}")
    if batch_size < 1 or max_rows < 1:
        raise ValueError("batch_size and max_rows must be positive")
    if max_tokens_per_pass is not None and max_tokens_per_pass < 1:
        raise ValueError(f"max_tokens_per_pass must be at least 1 (or None), got {max_tokens_per_pass}")
    samples = list(samples)
    if not samples:
        raise ValueError("no samples")
    conditions = resolve_conditions(samples, conditions, target)
    answers = list(answers) if answers is not None else answer_set(samples)
    if "low-rank" in conditions:
        for s in samples:
            next_answer(s.answer, answers)  # every sample's wrong answer exists, before any forward pass
    sources = list(dict.fromkeys(s for p in patches for _, s in p.pairs))
    sources += [
        s for s in patch_resume_sites(lm, patches) if s not in sources
    ]  # lean patched runs resume there
    start = time.perf_counter()
    parts: dict[str, list] = {c: [] for c in conditions}
    rules: dict[str, set] = {c: set() for c in conditions}
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        inputs = lm.encode_samples(batch)
        clean = run_clean(lm, inputs, sources)
        per_pass = max(1, max_rows // len(batch))
        if max_tokens_per_pass is not None:  # long image sequences: fewer stacked copies per pass
            per_pass = max(1, min(per_pass, max_tokens_per_pass // inputs["input_ids"].numel()))
        for condition, (c, p, rule, n_tokens) in _measure(
            lm, batch, inputs, clean, patches, conditions, target, answers, per_pass
        ).items():
            parts[condition].append((c, p, n_tokens))
            rules[condition].add(rule)
    result = {}
    for condition, chunks in parts.items():
        clean_m = {m: torch.cat([c[m] for c, _, _ in chunks]).numpy() for m in MEASURE_NAMES}
        patched_m = {m: torch.cat([p[m] for _, p, _ in chunks], dim=1).numpy() for m in MEASURE_NAMES}
        n_tokens = torch.cat([n for _, _, n in chunks]).numpy()
        rule = rules[condition].pop() if len(rules[condition]) == 1 else "top1"
        result[condition] = ConditionMeasures(rule, clean_m, patched_m, n_tokens)
    return PatchResult(patches, result, answers, seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- chapter helpers


def parse_direction(direction: str) -> tuple[str, str]:
    """'early->mid' (or 'Early → Mid') -> ('early', 'mid'): sources first, targets second."""
    text = direction.replace("→", "->").replace(" ", "").lower()
    source, sep, target = text.partition("->")
    if not sep or not source or not target:
        raise PatchConfigError(f"direction {direction!r} should read 'source->target', e.g. 'early->mid'")
    return source, target


def attention_patches(
    groups, directions: Iterable[str], positions: Iterable[str] = ("vision", "text"), kind: str = "attn"
) -> list[Patch]:
    """Section 2.2's configurations: for each position set and direction 'A->B', groups[A] onto groups[B].
    `groups`: a dict name -> layers or a `vlmlib.paper.groups.GroupPlan`."""
    out = []
    directions, positions = as_names(directions, "directions"), as_names(positions, "positions")
    for pos in positions:
        for d in directions:
            source, target = parse_direction(d)
            for g in (source, target):
                if g not in groups:
                    raise PatchConfigError(f"direction {d!r} names group {g!r}; known groups: {list(groups)}")
            out.append(Patch(kind, tuple(groups[source]), tuple(groups[target]), pos, f"{source}->{target}"))
    return out


def front_patches(
    groups, sources: Iterable[str], kind: str, positions: str = "all", target: str = "final"
) -> list[Patch]:
    """Appendix E's configurations: each source group onto the `target` group (the last layers).
    A source the group plan left out (a shallow model, see `vlmlib.paper.groups`) is skipped: its row is
    not comparable, and the plan's notes say why."""
    if target not in groups:
        raise PatchConfigError(f"target group {target!r} is not among the groups {list(groups)}")
    out = []
    dropped = set(getattr(groups, "dropped", ()))
    sources = as_names(sources, "sources")
    for name in sources:
        if name not in groups:
            if name in dropped:
                continue  # left out by the plan, with its reason in the plan's notes
            raise PatchConfigError(f"source group {name!r} is not among the groups {list(groups)}")
        out.append(Patch(kind, tuple(groups[name]), tuple(groups[target]), positions, name))
    return out
