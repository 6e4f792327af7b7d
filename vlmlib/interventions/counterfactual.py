"""Counterfactual activation patching: where is the answer carried?

The field's standard protocol (Zhang & Nanda 2024, "Towards best practices of activation patching";
Heimersheim & Nanda 2024, "How to use and interpret activation patching"): a clean and a corrupted run
whose inputs differ in the image only (same prompt, same token layout, different answers), and one
clean activation written into the corrupted run at a time. Where a patch brings the clean answer back,
that site carries what distinguishes the two images. Unlike the paper's protocol (one run's layers
written over another's layers of the same run), nothing else moves: the activation written is the
same site's, in a run that differs only in what it was shown.

    pairs = [(clean_sample, corrupted_sample), ...]            # same prompt, answers differ
    result = counterfactual_experiment(lm, pairs, kinds=("resid", "attn"))
    result.rows()    # per site, layer and position class: recovery, LD change, each with paired s.e.

Sites (decoder layer l, 0-based, as in `vlmlib.interventions.patching`): "resid" (the output of layer l,
H^(l+1)), "attn" and "mlp" (what attention and the MLP add to the residual in layer l).

Position classes, the decoder positions a patch writes:
    image     the image tokens
    question  every other real prompt token except the final one (the question, and the template's
              special tokens: BOS, Qwen2-VL's chat markup and <|vision_start|>)
    final     each row's final prompt position, where the answer is read
    all       every real prompt token (padding never)
and any other class by name, `positions=("hint", ...)` with `extra_positions={"hint": fn}`,
fn(lm, inputs, samples) -> (batch, seq) bool on the clean run's inputs (`vlmlib.hints.hint_mask`).

Pairs that differ in the text. With `differ="text"` the two runs see the same image and prompts of
the same token layout that differ in some text tokens (a hint that claims another count): the check
then requires the same length, the same image-token positions and the same masks, not the same ids.

Score, at the final position: LD = logit(clean answer) - logit(corrupted answer), the first token of
each answer (pairs whose answers share their first token are refused: LD would be 0 by construction).
    recovery = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)    0: corrupted, 1: clean
    ld_change = LD_patched - LD_corrupt
Both are per pair, and their standard errors are paired: the s.d. of the per-pair values over the pairs
(`vlmlib.stats.mean_se`), so the pair-to-pair spread of LD itself cancels.

Small gaps. A pair whose clean and corrupted LD differ by less than `min_gap` (the model barely tells
the two images apart) has no meaningful per-pair recovery (a ratio of two near-zeros): it is left out
of `recovery` and counted (`n_small_gap`); `ld_change` uses every pair, and `recovery_of_means` =
mean ld_change / mean gap over every pair is given beside it (no s.e.).

Machinery: the clean run records the patched sites (`run_clean`); the corrupted run records its own
states where a patched pass may resume. A pass writes len(patches) copies of the corrupted batch, copy k
patched by patches[k] (`run_patched`, sources taken from the clean run), and skips every block before
its first target by resuming from the corrupted run's state there (`ResumeAt`; the vision tower never
runs in a patched pass). Memory: the clean run of a batch keeps every patched site whole (kinds x layers
x batch x sequence x width); at full size, patch fewer layers or kinds per call, or lower `batch_size`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..observation import DEFAULT_MAX_TOKENS_PER_BATCH
from ..params import as_names
from ..stats import mean_se
from ..trace import site
from .patching import Patch, run_patched
from .resume import CleanRun, ResumeAt, resume_plan, run_clean, with_positions

POSITION_CLASSES = ("image", "question", "final", "all")
COUNTERFACTUAL_KINDS = ("resid", "attn", "mlp")
DEFAULT_MIN_GAP = 0.1  # logits: pairs with |LD_clean - LD_corrupt| below this have no per-pair recovery


class PairError(ValueError):
    """A clean/corrupted pair that cannot be compared (different token layouts, same answer, ...)."""


# ---------------------------------------------------------------- pairs and positions


def sample_name(sample, index: int) -> str:
    name = getattr(sample, "id", "") or "(no id)"
    return f"pair {index} ({name})"


DIFFERS = ("image", "text")  # what a pair may differ in


def answer_pair_ids(lm, pairs: Sequence[tuple], differ: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """(clean answer ids, corrupted answer ids): each answer's first token; PairError for a pair without
    two answers whose first tokens differ (or, with differ="image", whose questions differ)."""
    clean_ids, corrupt_ids = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise PairError(f"pair {i} is a {type(pair).__name__}, not a (clean, corrupted) pair of samples")
        clean, corrupt = pair
        what = sample_name(clean, i)
        if getattr(clean, "answer", None) in (None, "") or getattr(corrupt, "answer", None) in (None, ""):
            raise PairError(f"{what}: both samples need an answer (LD compares the two answers)")
        if str(clean.answer) == str(corrupt.answer):
            raise PairError(
                f"{what}: the clean and corrupted answers are the same ({clean.answer!r}); a counterfactual "
                "pair needs images with different answers"
            )
        if differ == "image" and clean.question != corrupt.question:
            raise PairError(
                f"{what}: the questions differ; clean and corrupted runs may differ in the image only"
            )
        a, b = lm.token_id(clean.answer), lm.token_id(corrupt.answer)
        if a == b:
            raise PairError(
                f"{what}: the answers {clean.answer!r} and {corrupt.answer!r} begin with the same token, so "
                "the logit difference of their first tokens is 0 by construction"
            )
        clean_ids.append(a)
        corrupt_ids.append(b)
    return torch.tensor(clean_ids), torch.tensor(corrupt_ids)


def check_layouts(
    clean_inputs,
    corrupt_inputs,
    names: Sequence[str],
    differ: str = "image",
    image_token_id: int | None = None,
) -> None:
    """PairError naming the first pair whose encodings differ in anything but the pixels: the real tokens
    of each row, then masks, token types and image grids row by row (so every position means the same in
    both runs, and Qwen2-VL's rotary positions agree). With differ="text", the real tokens may differ
    where neither run has an image token (`image_token_id`), not in number."""
    layout = (
        "token layout: a different number of image tokens or a different prompt; a counterfactual pair "
        "differs in the image only, with the same number of image tokens"
        if differ == "image"
        else "token layout: a pair that differs in the text needs prompts of the same number of tokens, "
        "with the image tokens at the same positions"
    )
    clean_ids, corrupt_ids = clean_inputs["input_ids"], corrupt_inputs["input_ids"]
    clean_real, corrupt_real = clean_inputs["attention_mask"].bool(), corrupt_inputs["attention_mask"].bool()
    for row, name in enumerate(names):
        a, b = clean_ids[row][clean_real[row]], corrupt_ids[row][corrupt_real[row]]
        if differ == "text" and len(a) == len(b):
            if torch.equal(a == image_token_id, b == image_token_id):
                continue
        elif torch.equal(a, b):
            continue
        raise PairError(
            f"{name}: the clean and corrupted prompts differ ({len(a)} vs {len(b)} tokens; {layout})"
        )
    for key, clean in clean_inputs.items():
        if key == "pixel_values" or not isinstance(clean, torch.Tensor):
            continue
        if key == "input_ids" and differ == "text":
            continue  # checked above
        corrupt = corrupt_inputs.get(key)
        for row, name in enumerate(names):
            if corrupt is None or corrupt.shape != clean.shape or not torch.equal(clean[row], corrupt[row]):
                raise PairError(f"{name}: the clean and corrupted inputs differ in {key} ({layout})")


def position_classes(lm, inputs) -> dict[str, torch.Tensor]:
    """(batch, seq) bool masks of the position classes."""
    real = inputs["attention_mask"].bool()
    rows = torch.arange(real.shape[0], device=real.device)
    final = torch.zeros_like(real)
    final[rows, lm.last_index(inputs)] = True
    image = lm.vision_mask(inputs) & real
    return {"image": image, "question": real & ~image & ~final, "final": final, "all": real}


# ---------------------------------------------------------------- patches and passes


def counterfactual_patches(
    lm,
    kinds: Iterable[str] = ("resid",),
    layers: Iterable[int] | None = None,
    positions: Iterable[str] = POSITION_CLASSES,
    extra: Iterable[str] = (),
) -> list[Patch]:
    """One patch per (kind, layer, position class): the clean run's site written over the same site of
    the corrupted run. `layers`: decoder layers (default: all), negative ones counted from the end.
    `extra`: names of position classes besides POSITION_CLASSES (given to the experiment)."""
    kinds, positions = as_names(kinds, "kinds"), as_names(positions, "positions")
    known = (*POSITION_CLASSES, *extra)
    for kind in kinds:
        if kind not in COUNTERFACTUAL_KINDS:
            raise ValueError(f"cannot patch site kind {kind!r} counterfactually; use {COUNTERFACTUAL_KINDS}")
    for p in positions:
        if p not in known:
            raise ValueError(f"unknown position class {p!r}; use {known}")
    depth = lm.num_layers
    chosen = range(depth) if layers is None else [int(x) for x in layers]
    resolved = []
    for layer in chosen:
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is outside the decoder (layers 0..{depth - 1})")
        resolved.append(layer % depth)
    resolved = sorted(dict.fromkeys(resolved))
    if not (kinds and positions and resolved):
        raise ValueError("no patches: give at least one kind, one layer and one position class")
    return [
        Patch(kind, (layer,), (layer,), pos, f"{kind} {layer} @ {pos}")
        for layer in resolved
        for kind in kinds
        for pos in positions
    ]


def resume_sites(lm, patches: Iterable[Patch]) -> list[str]:
    """The corrupted run's states a patched pass resumes from: the tower's output and, per first target,
    the residual before it."""
    out = [site("vision", lm.num_vision_layers - 1)]
    out += [site("resid", p.targets[0] - 1) for p in patches if p.targets[0] > 0]
    return list(dict.fromkeys(out))


@torch.no_grad()
def prepare_runs(
    lm, clean_inputs, corrupt_inputs, patches: Sequence[Patch], extra_masks: dict | None = None
) -> tuple[CleanRun, CleanRun, dict]:
    """(clean run with the patched sites and position-class masks, corrupted run with its resume states,
    corrupted inputs with their position ids computed once). `extra_masks`: further position classes."""
    clean_inputs = with_positions(lm, clean_inputs)
    corrupt_inputs = with_positions(lm, corrupt_inputs)
    sources = list(dict.fromkeys(s for p in patches for _, s in p.pairs))
    clean = run_clean(lm, clean_inputs, sources)
    masks = position_classes(lm, clean_inputs)
    real = clean_inputs["attention_mask"].bool()
    masks.update({name: m.to(real.device).bool() & real for name, m in (extra_masks or {}).items()})
    clean = replace(clean, masks=masks)
    corrupt = run_clean(lm, corrupt_inputs, resume_sites(lm, patches))
    return clean, corrupt, corrupt_inputs


@torch.no_grad()
def patched_logits(lm, clean: CleanRun, corrupt: CleanRun, corrupt_inputs, patches: Sequence[Patch]):
    """(len(patches), batch, vocab) final-position logits of the corrupted batch, copy k patched with the
    clean run's activation of patches[k]. Blocks before the first target do not run: they resume from
    the corrupted run's state (the clean run only supplies the patched values)."""
    first = min(p.targets[0] for p in patches)
    skips = resume_plan(lm, corrupt, first_decoder=first, first_tower=lm.num_vision_layers)
    with ResumeAt(lm, skips, corrupt, len(patches)):
        logits, _ = run_patched(lm, corrupt_inputs, patches, clean, lean=False)
    return logits


def answer_logit_diff(
    logits: torch.Tensor, clean_ids: torch.Tensor, corrupt_ids: torch.Tensor
) -> torch.Tensor:
    """LD = logit(clean answer) - logit(corrupted answer); logits (..., batch, vocab), ids (batch,)."""

    def logit(ids):
        return logits.gather(-1, ids.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)

    return logit(clean_ids) - logit(corrupt_ids)


# ---------------------------------------------------------------- results


@dataclass
class CounterfactualResult:
    """Per-pair logit differences, clean, corrupted and patched; `rows()` summarises them."""

    patches: list[Patch]
    ld_clean: np.ndarray  # (n_pairs,)
    ld_corrupt: np.ndarray  # (n_pairs,)
    ld_patched: np.ndarray  # (n_patches, n_pairs)
    min_gap: float = DEFAULT_MIN_GAP
    pair_ids: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_pairs(self) -> int:
        return len(self.ld_clean)

    @property
    def gap(self) -> np.ndarray:
        """LD_clean - LD_corrupt per pair: what a patch can recover."""
        return self.ld_clean - self.ld_corrupt

    @property
    def small_gap(self) -> np.ndarray:
        """Pairs left out of `recovery`: |gap| < min_gap."""
        return np.abs(self.gap) < self.min_gap

    @property
    def ld_change(self) -> np.ndarray:
        """(n_patches, n_pairs): LD_patched - LD_corrupt."""
        return self.ld_patched - self.ld_corrupt

    @property
    def recovery(self) -> np.ndarray:
        """(n_patches, n_pairs): normalised recovery per pair; NaN for a pair with a small gap."""
        gap = np.where(self.small_gap, np.nan, self.gap)
        return self.ld_change / gap

    def rows(self) -> list[dict]:
        """One dict per patch: kind, layer, positions; `recovery` (mean over pairs with |gap| >= min_gap,
        paired s.e.; `n_recovery` pairs, `n_small_gap` left out), `ld_change` (every pair, paired s.e.),
        `ld_patched`, `recovery_of_means`, and the clean and corrupted LD with their s.e."""
        ld_clean, ld_clean_se = mean_se(self.ld_clean)
        ld_corrupt, ld_corrupt_se = mean_se(self.ld_corrupt)
        gap, gap_se = mean_se(self.gap)
        kept = ~self.small_gap
        recovery, changes = self.recovery, self.ld_change
        out = []
        for k, p in enumerate(self.patches):
            row = {
                "kind": p.kind,
                "layer": p.targets[0],
                "positions": p.positions,
                "label": p.label,
                "n": self.n_pairs,
                "n_recovery": int(kept.sum()),
                "n_small_gap": int((~kept).sum()),
                "min_gap": self.min_gap,
                "ld_clean": ld_clean,
                "ld_clean_se": ld_clean_se,
                "ld_corrupt": ld_corrupt,
                "ld_corrupt_se": ld_corrupt_se,
                "gap": gap,
                "gap_se": gap_se,
            }
            row["recovery"], row["recovery_se"] = mean_se(recovery[k][kept])
            row["ld_change"], row["ld_change_se"] = mean_se(changes[k])
            row["ld_patched"], row["ld_patched_se"] = mean_se(self.ld_patched[k])
            row["recovery_of_means"] = float(changes[k].mean() / gap) if gap != 0 else math.nan
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {
            "n_pairs": self.n_pairs,
            "min_gap": self.min_gap,
            "pairs": [list(p) for p in self.pair_ids],
            "seconds": self.seconds,
            "rows": self.rows(),
        }


def counterfactual_experiment(
    lm,
    pairs: Sequence[tuple],
    kinds: Iterable[str] = ("resid",),
    layers: Iterable[int] | None = None,
    positions: Iterable[str] = POSITION_CLASSES,
    batch_size: int = 8,
    max_rows: int = 32,
    min_gap: float = DEFAULT_MIN_GAP,
    max_tokens_per_pass: int | None = DEFAULT_MAX_TOKENS_PER_BATCH,
    differ: str = "image",
    extra_positions: dict | None = None,
) -> CounterfactualResult:
    """Patch every (kind, layer, position class) of `counterfactual_patches` from each pair's clean run into
    its corrupted run. `pairs`: (clean sample, corrupted sample), same question and token layout,
    answers whose first tokens differ (checked before any forward pass; layouts when each batch is
    encoded). `max_rows` and `max_tokens_per_pass` bound how many patched copies share a pass, as in
    `patch_experiment`. `min_gap`: see the module's note on small gaps. `differ`: "image" (same prompt,
    other image) or "text" (same image and layout, other text tokens). `extra_positions`: position classes
    besides POSITION_CLASSES, {name: fn(lm, clean inputs, clean samples) -> (batch, seq) bool}."""
    pairs = list(pairs)
    if not pairs:
        raise PairError("no pairs")
    if differ not in DIFFERS:
        raise ValueError(f"differ must be one of {DIFFERS}, not {differ!r}")
    extra_positions = dict(extra_positions or {})
    if batch_size < 1 or max_rows < 1:
        raise ValueError("batch_size and max_rows must be positive")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    patches = counterfactual_patches(lm, kinds, layers, positions, extra=tuple(extra_positions))
    clean_ids, corrupt_ids = answer_pair_ids(lm, pairs, differ)
    start = time.perf_counter()
    ld_clean, ld_corrupt, ld_patched = [], [], []
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        names = [sample_name(c, i + j) for j, (c, _) in enumerate(batch)]
        clean_inputs = lm.encode_samples([c for c, _ in batch])
        corrupt_inputs = lm.encode_samples([x for _, x in batch])
        check_layouts(clean_inputs, corrupt_inputs, names, differ, lm.image_token_id)
        masks = {name: fn(lm, clean_inputs, [c for c, _ in batch]) for name, fn in extra_positions.items()}
        clean, corrupt, corrupt_inputs = prepare_runs(lm, clean_inputs, corrupt_inputs, patches, masks)
        device = clean.logits.device
        a, b = clean_ids[i : i + batch_size].to(device), corrupt_ids[i : i + batch_size].to(device)
        ld_clean.append(answer_logit_diff(clean.logits, a, b).cpu())
        ld_corrupt.append(answer_logit_diff(corrupt.logits, a, b).cpu())
        per_pass = max(1, max_rows // len(batch))
        if max_tokens_per_pass is not None:
            per_pass = max(1, min(per_pass, max_tokens_per_pass // corrupt_inputs["input_ids"].numel()))
        ld_patched.append(
            torch.cat(
                [
                    answer_logit_diff(
                        patched_logits(lm, clean, corrupt, corrupt_inputs, patches[j : j + per_pass]), a, b
                    ).cpu()
                    for j in range(0, len(patches), per_pass)
                ]
            )
        )
    return CounterfactualResult(
        patches,
        torch.cat(ld_clean).double().numpy(),
        torch.cat(ld_corrupt).double().numpy(),
        torch.cat(ld_patched, dim=1).double().numpy(),
        min_gap=min_gap,
        pair_ids=[(getattr(c, "id", ""), getattr(x, "id", "")) for c, x in pairs],
        seconds=time.perf_counter() - start,
    )
