"""The logit lens: when does the answer become readable from the residual stream?

Every decoder layer's raw residual H^(l) (l = 0: the embeddings after the image is merged in; l = L:
the last layer's output, read from a hook, never `output_hidden_states[-1]`, which is after the final
norm) is decoded as if it were the last one: the model's own final norm and unembedding, and the
logit soft-capping of a head that has it (Gemma 2). The layer from which the answer stays on top is
the paper's "retrieve" moment, measured directly (nostalgebraist 2020).

    result = logit_lens(lm, samples, image=True)
    result.rows()                          # per layer and read: log p(answer), rank, top-1, logit difference
    result.first_decodable_layer(0.9)      # where the final position's top-1 accuracy settles

Reads:
    final   the final prompt position (where the answer is predicted)
    image   every image-token position, each decoded on its own, then averaged over the image tokens of
            a sample: the answer's timeline inside the image

Measures, per sample and layer, of the answer's first token (`LoadedModel.token_id`), or with
target="top1" of the model's own top-1 prediction:
    logprob     its log-probability under the decoded distribution
    rank        1 + the number of other tokens whose logit is at least as large (ties count against it)
    correct     it is strictly the top-1 token (rank 1)
    logit_diff  its logit minus the best other token's (> 0 exactly when correct)

Memory: nothing is kept per position. A hook decodes each layer's image positions as the pass reaches
them (in chunks of tokens, so a 257k-token vocabulary times 1,024 image tokens never sits in memory at
once) and keeps the final position's state, one (batch, width) row per layer, decoded after the pass.

A tuned lens (Belrose et al. 2023) replaces "as if it were the last layer" by a per-layer affine map
onto the last layer's space, fitted on held-out samples (`fit_tuned_lens`): a layer whose basis drifts
from the output's can still be read. Ours is fitted by ridge least squares towards the identity on the
final position's states, not by the KL objective of the paper that introduced it; it applies to the
final read only (image positions are out of its training distribution).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .interventions.resume import final_logits
from .stats import mean_se, proportion_se
from .trace import Trace, site

READS = ("final", "image")
LENS_MEASURES = ("logprob", "rank", "correct", "logit_diff")
TARGETS = ("auto", "answer", "top1")
DECODE_CHUNK_ELEMENTS = 1 << 24  # image tokens x vocabulary decoded at once (64 MiB of float32 logits)


# ---------------------------------------------------------------- the model's own head


def final_norm(lm) -> torch.nn.Module:
    """The decoder's final norm: the `norm` beside the decoder's layer list (Gemma, Qwen2, Llama)."""
    parent = lm.model.get_submodule(lm.family.decoder_layers.rsplit(".", 1)[0])
    norm = getattr(parent, "norm", None)
    if not isinstance(norm, torch.nn.Module):
        raise ValueError(
            f"{type(parent).__name__} has no `norm` beside its layers ({lm.family.decoder_layers}): "
            "the logit lens cannot find this family's final norm"
        )
    return norm


def decode(lm, hidden: torch.Tensor) -> torch.Tensor:
    """float32 logits of raw residual states (..., width), decoded exactly as the model decodes its last
    layer's output: final norm, unembedding, then any final logit soft-capping (Gemma 2)."""
    logits = lm.model.get_output_embeddings()(final_norm(lm)(hidden))
    cap = getattr(lm.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


def answer_measures(logits: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """logprob, rank, correct, logit_diff of token ids (...,) under logits (..., vocab)."""
    ids = ids.expand(logits.shape[:-1]).unsqueeze(-1)
    logit = logits.gather(-1, ids).squeeze(-1)
    others = logits.scatter(-1, ids, float("-inf"))
    logit_diff = logit - others.amax(dim=-1)
    return {
        "logprob": logit - torch.logsumexp(logits, dim=-1),
        "rank": 1 + (others >= logit.unsqueeze(-1)).sum(dim=-1),
        "correct": logit_diff > 0,
        "logit_diff": logit_diff,
    }


# ---------------------------------------------------------------- tuned lens


@dataclass
class TunedLens:
    """Per-layer affine maps H^(l) -> H^(L) at the final position: decode(h @ weight[l] + bias[l])."""

    weight: torch.Tensor  # (L + 1, width, width); the last is the identity
    bias: torch.Tensor  # (L + 1, width); the last is zero
    ridge: float
    fitted_on: frozenset[str] = field(default_factory=frozenset)  # sample ids, to refuse evaluating on them

    def translate(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight[layer].to(hidden.device, torch.float32)
        bias = self.bias[layer].to(hidden.device, torch.float32)
        return (hidden.float() @ weight + bias).to(hidden.dtype)


@torch.no_grad()
def fit_tuned_lens(lm, samples: Sequence, batch_size: int = 8, ridge: float = 1.0) -> TunedLens:
    """Fit W_l, b_l minimising ||H^(l) W_l + b_l - H^(L)||^2 + ridge ||W_l - I||^2 over the final position
    of `samples` (closed form). The ridge pulls towards the plain logit lens, so that a few samples
    against a wide model (thousands of dimensions) give a map that is not a memorised one. Fit on
    samples the lens is not evaluated on: `logit_lens` refuses a sample it was fitted on."""
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to fit the tuned lens on")
    states = torch.cat(
        [
            final_states(lm, lm.encode_samples(samples[i : i + batch_size]))
            for i in range(0, len(samples), batch_size)
        ],
        dim=1,
    ).double()  # (L + 1, n, width)
    target = states[-1]
    n_states, _, width = states.shape
    eye = torch.eye(width, dtype=torch.float64, device=states.device)
    weights, biases = [], []
    for layer in range(n_states - 1):
        x = states[layer]
        x_mean, y_mean = x.mean(dim=0), target.mean(dim=0)
        xc, yc = x - x_mean, target - y_mean
        weight = torch.linalg.solve(xc.T @ xc + ridge * eye, xc.T @ yc + ridge * eye)
        weights.append(weight)
        biases.append(y_mean - x_mean @ weight)
    weights.append(eye)
    biases.append(torch.zeros(width, dtype=torch.float64, device=states.device))
    ids = frozenset(s.id for s in samples if getattr(s, "id", ""))
    return TunedLens(torch.stack(weights).float().cpu(), torch.stack(biases).float().cpu(), ridge, ids)


# ---------------------------------------------------------------- the pass


def state_sites(lm) -> list[str]:
    """The sites of H^(0) .. H^(L), in forward order."""
    return [site("embed", 0)] + [site("resid", layer) for layer in range(lm.num_layers)]


@torch.no_grad()
def final_states(lm, inputs) -> torch.Tensor:
    """(L + 1, batch, width): every H^(l) at each row's final position; nothing else is kept."""
    rows = torch.arange(inputs["input_ids"].shape[0], device=inputs["input_ids"].device)
    last = lm.last_index(inputs)
    kept = []
    sites = state_sites(lm)
    with Trace(lm, sites, stop=True, read=lambda name, value: kept.append(value[rows, last].detach())):
        lm.forward_base(inputs)
    return torch.stack(kept)


@torch.no_grad()
def lens_batch(lm, inputs, ids: torch.Tensor, image: bool = False, tuned: TunedLens | None = None):
    """Measures of token ids (batch,) at every layer of one encoded batch: {read: {measure: (L + 1, batch)}}.

    The final position's states are kept (one row per layer) and decoded after the pass; image positions
    are decoded in the hook as each layer's output passes, and averaged over each row's image tokens."""
    rows = torch.arange(ids.shape[0], device=ids.device)
    last = lm.last_index(inputs)
    vision = lm.vision_mask(inputs)
    image_rows = vision.nonzero()[:, 0]  # the row of every image token, in the order value[vision] gives
    n_image = vision.sum(dim=1).clamp(min=1).float()
    token_ids = ids[image_rows]
    chunk = max(1, DECODE_CHUNK_ELEMENTS // lm.model.get_output_embeddings().weight.shape[0])
    kept, image_means = [], {m: [] for m in LENS_MEASURES}

    def read(name, value):
        kept.append(value[rows, last].detach())
        if not image:
            return
        states = value[vision]
        sums = {m: torch.zeros(len(rows), device=ids.device) for m in LENS_MEASURES}
        for start in range(0, states.shape[0], chunk):
            part = answer_measures(
                decode(lm, states[start : start + chunk]), token_ids[start : start + chunk]
            )
            for m, v in part.items():
                sums[m].index_add_(0, image_rows[start : start + chunk], v.float())
        for m in LENS_MEASURES:
            image_means[m].append(sums[m] / n_image)

    with Trace(lm, state_sites(lm), stop=True, read=read):
        lm.forward_base(inputs)
    final = {m: [] for m in LENS_MEASURES}
    for layer, hidden in enumerate(kept):
        if tuned is not None:
            hidden = tuned.translate(layer, hidden)
        for m, v in answer_measures(decode(lm, hidden), ids).items():
            final[m].append(v.float())
    out = {"final": {m: torch.stack(v) for m, v in final.items()}}
    if image:
        out["image"] = {m: torch.stack(v) for m, v in image_means.items()}
    return out


@torch.no_grad()
def lens_token_logits(lm, samples: Sequence, token_ids, batch_size: int = 8) -> np.ndarray:
    """(L + 1, n_samples, k) float: the logit-lens logits of chosen tokens at each sample's final
    position, from every state H^(0) .. H^(L); `token_ids` (n_samples, k), the tokens of each sample (two
    answers, to follow their logit difference across layers)."""
    samples = list(samples)
    ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
    if ids.ndim != 2 or ids.shape[0] != len(samples):
        raise ValueError(f"token_ids must be (n_samples, k) = ({len(samples)}, k), got {tuple(ids.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    parts = []
    for i in range(0, len(samples), batch_size):
        states = final_states(lm, lm.encode_samples(samples[i : i + batch_size]))  # (L + 1, b, width)
        chosen = ids[i : i + batch_size].to(states.device)
        logits = decode(lm, states)  # (L + 1, b, vocab)
        parts.append(logits.gather(-1, chosen.expand(logits.shape[0], -1, -1)).cpu())
    return torch.cat(parts, dim=1).double().numpy()


# ---------------------------------------------------------------- results


@dataclass
class LensResult:
    """Per-sample measures at every state H^(0) .. H^(L); `rows()` summarises them per layer."""

    reads: dict[str, dict[str, np.ndarray]]  # read -> measure -> (L + 1, n_samples)
    target: str  # "answer" or "top1": which token is measured
    lens: str = "logit"  # "logit" or "tuned"
    sample_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_layers(self) -> int:
        """L: the decoder's depth (there are L + 1 states)."""
        return next(iter(self.reads["final"].values())).shape[0] - 1

    @property
    def n_samples(self) -> int:
        return next(iter(self.reads["final"].values())).shape[1]

    def accuracy(self, read: str = "final") -> np.ndarray:
        """(L + 1,) top-1 accuracy of the target at each layer (for "image": the mean share of image
        tokens whose top-1 it is)."""
        return self.reads[read]["correct"].mean(axis=1)

    def first_decodable_layer(self, threshold: float = 0.9) -> int | None:
        """The first layer l from which the final position's top-1 accuracy stays at or above `threshold`
        times the last layer's accuracy, at l and at every later layer (so a transient early hit does not
        count). None when the last layer's accuracy is 0: the answer is never decodable. With the model's
        own top-1 as target the last layer's accuracy is 1 and the rule reads "from where the lens agrees
        with the output on at least `threshold` of the samples"."""
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        accuracy = self.accuracy("final")
        if accuracy[-1] <= 0:
            return None
        below = np.flatnonzero(accuracy < threshold * accuracy[-1])
        return 0 if below.size == 0 else int(below[-1]) + 1

    def rows(self) -> list[dict]:
        """One dict per (read, layer): `layer` l names H^(l) (0: embeddings, L: the last layer's output);
        each measure's mean and `<measure>_se` over samples (top-1 at the final position: the binomial
        s.e. of a proportion)."""
        out = []
        for read, measures in self.reads.items():
            for layer in range(self.n_layers + 1):
                row = {
                    "read": read,
                    "layer": layer,
                    "lens": self.lens,
                    "target": self.target,
                    "n": self.n_samples,
                }
                for m in LENS_MEASURES:
                    summary = proportion_se if (m == "correct" and read == "final") else mean_se
                    row[m], row[m + "_se"] = summary(measures[m][layer])
                out.append(row)
        return out

    def to_dict(self) -> dict:
        return {
            "lens": self.lens,
            "target": self.target,
            "n_samples": self.n_samples,
            "n_layers": self.n_layers,
            "first_decodable_layer": self.first_decodable_layer(),
            "seconds": self.seconds,
            "rows": self.rows(),
        }


def logit_lens(
    lm,
    samples: Sequence,
    batch_size: int = 8,
    image: bool = False,
    target: str = "auto",
    tuned: TunedLens | None = None,
) -> LensResult:
    """The answer's timeline over every layer of `samples`, at the final position (and with `image`, at the
    image tokens). `target`: "answer" (the first token of each sample's answer), "top1" (the model's own
    top-1 at the final position: one more forward pass per batch) or "auto" (the answer when every sample
    has one). `tuned`: a `TunedLens` from `fit_tuned_lens` on other samples, applied at the final read."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    samples = list(samples)
    if not samples:
        raise ValueError("no samples")
    if tuned is not None:
        overlap = sorted(tuned.fitted_on & {s.id for s in samples})
        if overlap:
            raise ValueError(
                f"the tuned lens was fitted on {len(overlap)} of these samples ({', '.join(overlap[:3])}"
                f"{', ...' if len(overlap) > 3 else ''}): evaluate it on held-out samples"
            )
        if tuned.weight.shape[0] != lm.num_layers + 1:
            raise ValueError(
                f"the tuned lens has {tuned.weight.shape[0]} maps; this model has {lm.num_layers + 1} states"
            )
    has_answers = all(getattr(s, "answer", None) not in (None, "") for s in samples)
    if target == "auto":
        target = "answer" if has_answers else "top1"
    if target == "answer" and not has_answers:
        raise ValueError("target='answer' but some samples have no answer; use target='top1' or 'auto'")
    start = time.perf_counter()
    parts = []
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        inputs = lm.encode_samples(batch)
        if target == "top1":
            ids = final_logits(lm, inputs).argmax(dim=-1)
        else:
            ids = torch.tensor([lm.token_id(s.answer) for s in batch], device=inputs["input_ids"].device)
        parts.append(lens_batch(lm, inputs, ids, image=image, tuned=tuned))
    reads = {
        read: {m: torch.cat([p[read][m] for p in parts], dim=1).cpu().numpy() for m in LENS_MEASURES}
        for read in parts[0]
    }
    return LensResult(
        reads,
        target=target,
        lens="logit" if tuned is None else "tuned",
        sample_ids=[getattr(s, "id", "") for s in samples],
        seconds=time.perf_counter() - start,
    )
