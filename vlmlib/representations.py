"""Chapter 1 (paper 2.1, eq. 1-2): how much each decoder layer changes the tokens it carries.

AvgSim(l) = mean over samples of the mean over a modality's tokens of cos(H_t^(l), H_t^(l+1)),
with H^(0) the decoder input (image features merged in) and H^(l+1) the raw output of decoder
layer l (never the final-norm output).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .trace import Trace


def batches(items, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


@torch.no_grad()
def consecutive_layer_similarity(lm, samples, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per-sample AvgSim: {"vision": (n_samples, n_layers), "text": (n_samples, n_layers)}.

    Column l compares H^(l) with H^(l+1), i.e. the input and the output of decoder layer l.
    """
    sites = ["embed.0"] + [f"resid.{layer}" for layer in range(lm.num_layers)]
    per_sample = {"vision": [], "text": []}
    for batch in batches(samples, batch_size):
        inputs = lm.encode_samples(batch)
        with Trace(lm, sites) as trace:
            lm.forward(inputs)
        states = torch.stack([trace[s] for s in sites]).float()  # (layers + 1, batch, seq, width)
        cosine = F.cosine_similarity(states[:-1], states[1:], dim=-1)  # (layers, batch, seq)
        for modality, mask in (("vision", lm.vision_mask(inputs)), ("text", lm.text_mask(inputs))):
            weight = mask.float()
            per_sample[modality].append(((cosine * weight).sum(-1) / weight.sum(-1)).T.cpu())
    return {m: torch.cat(v).numpy() for m, v in per_sample.items()}


def mean_and_sem(per_sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over samples (axis 0) and its standard error (0 for a single sample)."""
    n = per_sample.shape[0]
    sem = per_sample.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(per_sample.shape[1:])
    return per_sample.mean(axis=0), sem
