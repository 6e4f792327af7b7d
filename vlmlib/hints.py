"""When text and image disagree: where a hint sits in the prompt, and what the model answers under it.

A hint is text inside the question (`vlmlib.data.hints`). To knock it out or patch it, the analyses
need its token positions in the encoded prompt, for any family and tokenizer:

    mask = hint_mask(lm, samples, inputs)     # (batch, seq) bool: the tokens the hint adds

The prompt is encoded with and without the hint; the tokens the hint adds are what lies between the
longest common prefix and the longest common suffix of the two token sequences (the image tokens
and the template are the same in both). A tokenizer that writes the first word after the hint
differently once something precedes it (byte-level BPE's "How" and " How") makes that token differ
too; the region is then trimmed at both ends, by decoding, to the fewest tokens whose text still
holds the hint's (a token that straddles the hint's boundary stays in). Where the decoded text does
not hold the hint (a word-level tokenizer that maps unknown words to <unk>), the region is kept as it
is: it is exactly the tokens the hint adds.

    result = hint_experiment(lm, samples)     # the same images with no, a true and a false hint
    result.summary()                          # accuracy, answers that follow the false count, ...
    result.by_disagreement()                  # the same under conflict, by |claimed - true|

Every share has its standard error over samples; a difference of two shares on the same samples
(answers that follow the hint minus answers that follow the image) has the paired one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .data.hints import (
    HINT_KINDS,
    MAX_HINT_COUNT,
    answer_count,
    disagreement,
    hint_variants,
    unhinted_question,
)
from .interventions.resume import final_logits
from .stats import mean_se, proportion_se

# ---------------------------------------------------------------- where the hint is


def _norm(text: str) -> str:
    return "".join(text.split())


def hint_span(
    with_ids: Sequence[int],
    without_ids: Sequence[int],
    hint: str | None = None,
    decode: Callable[[list[int]], str] | None = None,
) -> tuple[int, int]:
    """[start, stop) of the tokens of `with_ids` (a prompt with the hint) that the hint adds to
    `without_ids` (the same prompt without it); trimmed by decoding where `hint` and `decode` are given
    (module docstring)."""
    a, b = list(with_ids), list(without_ids)
    if len(a) <= len(b):
        raise ValueError(
            f"the prompt with the hint has {len(a)} tokens, without it {len(b)}: the hint adds no token"
        )
    p = 0
    while p < len(b) and a[p] == b[p]:
        p += 1
    s = 0
    while s < len(b) - p and a[-1 - s] == b[-1 - s]:
        s += 1
    start, stop = p, len(a) - s
    if not hint or decode is None:
        return start, stop
    target = _norm(hint)

    def holds(i: int, j: int) -> bool:
        return target in _norm(decode(a[i:j]))

    if not holds(start, stop):
        return start, stop  # unknown words: the hint's tokens cannot be read back, keep what it adds
    while stop - start > 1 and holds(start, stop - 1):
        stop -= 1
    while stop - start > 1 and holds(start + 1, stop):
        start += 1
    return start, stop


def hint_mask(lm, samples: Sequence, inputs=None) -> torch.Tensor:
    """(batch, seq) bool: the positions of each sample's hint in its encoded prompt (`inputs`, encoded
    here if not given); all False in rows whose sample has no hint. Batches are right-padded."""
    samples = list(samples)
    inputs = lm.encode_samples(samples) if inputs is None else inputs
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    mask = torch.zeros_like(real)
    hinted = [i for i, s in enumerate(samples) if getattr(s, "hint", None)]
    if not hinted:
        return mask
    bare = lm.encode_samples([replace(samples[i], question=unhinted_question(samples[i])) for i in hinted])
    tokenizer = lm.processor.tokenizer
    vision = lm.vision_mask(inputs)

    def decode(token_ids):
        return tokenizer.decode(token_ids, skip_special_tokens=False)

    for k, i in enumerate(hinted):
        with_ids = ids[i][real[i]].tolist()
        without_ids = bare["input_ids"][k][bare["attention_mask"][k].bool()].tolist()
        start, stop = hint_span(with_ids, without_ids, samples[i].hint, decode)
        mask[i, start:stop] = True
        if bool((mask[i] & vision[i]).any()):
            raise ValueError(
                f"sample {samples[i].id}: the hint's tokens overlap the image's; "
                "is the hint inside the question?"
            )
    return mask


# ---------------------------------------------------------------- which counts a model can write


def count_token_ids(lm, max_count: int = MAX_HINT_COUNT) -> dict[int, int]:
    """{count: token id} for the counts 1..max_count that the model writes as one known token of its
    own (not the tokenizer's unknown token, not shared with another count)."""
    tokenizer = lm.processor.tokenizer
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids = {}
    for n in range(1, max_count + 1):
        tokens = lm.answer_token_ids(str(n))
        if len(tokens) == 1 and tokens[0] != unknown:
            ids[n] = tokens[0]
    shared = {t for t in ids.values() if list(ids.values()).count(t) > 1}
    return {n: t for n, t in ids.items() if t not in shared}


def writable(lm, samples: Sequence, max_count: int = MAX_HINT_COUNT) -> tuple[list, list[str]]:
    """(samples whose true and conflicting counts the model can write, ids of those left out)."""
    ids = count_token_ids(lm, max_count)
    kept, dropped = [], []
    for s in samples:
        variants = hint_variants(s, max_count)
        ok = answer_count(s, max_count) in ids and variants["conflict"].hint_count in ids
        (kept if ok else dropped).append(s if ok else getattr(s, "id", ""))
    return kept, dropped


# ---------------------------------------------------------------- what the model answers


@dataclass
class HintResult:
    """Per sample, under each hint kind: the top-1 answer and the logit difference between the true
    count and the conflicting one (the count the false hint claims; under no hint and a true hint, the
    same count, which the prompt then does not mention: the base rate the false hint is judged against)."""

    true: np.ndarray  # (n,) the true count
    claimed: np.ndarray  # (n,) the conflicting hint's count
    true_ids: np.ndarray  # (n,) their tokens
    claimed_ids: np.ndarray
    predicted: dict[str, np.ndarray]  # kind -> (n,) top-1 token id at the final position
    logit_diff: dict[str, np.ndarray]  # kind -> (n,) logit(true) - logit(claimed)
    sample_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_samples(self) -> int:
        return len(self.true)

    @property
    def size(self) -> np.ndarray:
        """(n,) the size of each sample's disagreement, |claimed - true|."""
        return np.abs(self.claimed - self.true)

    def outcomes(self, kind: str) -> dict[str, np.ndarray]:
        """Per sample under `kind`: answers the true count, answers the conflicting count, neither."""
        correct = self.predicted[kind] == self.true_ids
        follows = self.predicted[kind] == self.claimed_ids
        return {"correct": correct, "follows_claim": follows, "other": ~correct & ~follows}

    def _summary(self, kind: str, keep: np.ndarray) -> dict:
        o = {m: v[keep].astype(float) for m, v in self.outcomes(kind).items()}
        out = {"n": int(keep.sum())}
        for m, v in o.items():
            out[m], out[m + "_se"] = proportion_se(v)
        # paired: on each sample, the claim's answer minus the image's (+1, 0 or -1)
        out["claim_minus_image"], out["claim_minus_image_se"] = mean_se(o["follows_claim"] - o["correct"])
        out["logit_diff"], out["logit_diff_se"] = mean_se(self.logit_diff[kind][keep])
        return out

    def summary(self) -> dict:
        """{kind: {n, correct, follows_claim, other, claim_minus_image, logit_diff, each with _se}}."""
        every = np.ones(self.n_samples, dtype=bool)
        return {kind: self._summary(kind, every) for kind in self.predicted}

    def by_disagreement(self, kind: str = "conflict") -> dict[int, dict]:
        """{size: the summary of `kind` over the samples whose disagreement has that size}."""
        return {int(d): self._summary(kind, self.size == d) for d in sorted(set(self.size.tolist()))}

    def to_dict(self) -> dict:
        return {
            "n_samples": self.n_samples,
            "seconds": self.seconds,
            "summary": self.summary(),
            "by_disagreement": {str(d): s for d, s in self.by_disagreement().items()},
            "sample_ids": self.sample_ids,
        }


def variant_sets(samples: Sequence, max_count: int = MAX_HINT_COUNT) -> dict[str, list]:
    """{kind: the samples under that kind of hint}, in the order of `samples`."""
    variants = [hint_variants(s, max_count) for s in samples]
    return {kind: [v[kind] for v in variants] for kind in HINT_KINDS}


@torch.no_grad()
def hint_experiment(
    lm, samples: Sequence, batch_size: int = 8, max_count: int = MAX_HINT_COUNT
) -> HintResult:
    """Every sample with no hint, a true hint and a false one (`hint_variants`): the top-1 answer and
    logit(true) - logit(conflicting count) at the final position. The counts must be ones the model
    writes as tokens of their own (`writable` keeps those samples)."""
    samples = list(samples)
    if not samples:
        raise ValueError("no samples")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    ids = count_token_ids(lm, max_count)
    sets = variant_sets(samples, max_count)
    true = np.array([answer_count(s, max_count) for s in samples])
    claimed = np.array([s.hint_count for s in sets["conflict"]])
    missing = sorted({int(n) for n in (*true, *claimed) if n not in ids})
    if missing:
        raise ValueError(
            f"the model has no token of its own for the counts {missing}: keep the samples it can answer "
            "(vlmlib.hints.writable)"
        )
    true_ids = np.array([ids[n] for n in true])
    claimed_ids = np.array([ids[n] for n in claimed])
    start = time.perf_counter()
    predicted, logit_diff = {}, {}
    for kind, variants in sets.items():
        tops, diffs = [], []
        for i in range(0, len(variants), batch_size):
            logits = final_logits(lm, lm.encode_samples(variants[i : i + batch_size])).float().cpu()
            rows = torch.arange(logits.shape[0])
            a = torch.as_tensor(true_ids[i : i + batch_size])
            b = torch.as_tensor(claimed_ids[i : i + batch_size])
            tops.append(logits.argmax(dim=-1))
            diffs.append(logits[rows, a] - logits[rows, b])
        predicted[kind] = torch.cat(tops).numpy()
        logit_diff[kind] = torch.cat(diffs).double().numpy()
    return HintResult(
        true,
        claimed,
        true_ids,
        claimed_ids,
        predicted,
        logit_diff,
        sample_ids=[getattr(s, "id", "") for s in samples],
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "HintResult",
    "count_token_ids",
    "disagreement",
    "hint_experiment",
    "hint_mask",
    "hint_span",
    "variant_sets",
    "writable",
]
