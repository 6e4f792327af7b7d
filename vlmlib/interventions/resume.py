"""What patching and knockouts share: the clean run, repeated batches, and lean runs that resume from it.

    clean = run_clean(lm, inputs, sites=["resid.4"])          # logits at the final position, sites recorded
    with ResumeAt(lm, resume_plan(lm, clean, first_decoder=5), clean, n=3):
        logits = final_logits(lm, repeat_inputs(with_positions(lm, inputs), 3))   # layers 0-4 not computed

Position sets (decoder positions a patch may write): "vision" (image tokens), "text" (real non-image
tokens, the final one included), "all" (every real token); padding never.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..trace import Trace, site

POSITION_SETS = ("vision", "text", "all")


def repeat_inputs(inputs, n: int) -> dict:
    """The batch n times along dim 0: rows (and Qwen2-VL's packed pixel patches) in blocks; Qwen2-VL's
    (3, batch, T) position ids along their batch dim."""

    def tiled(key, value):
        if not isinstance(value, torch.Tensor) or n == 1:
            return value
        return torch.cat([value] * n, dim=1 if key == "position_ids" and value.dim() == 3 else 0)

    return {k: tiled(k, v) for k, v in inputs.items()}


def with_positions(lm, inputs) -> dict:
    """`inputs` with the decoder's position ids where the family computes them at a cost (Qwen2-VL), so
    that a repeated batch (`repeat_inputs`) does not compute them again for every copy of every row."""
    if "position_ids" in inputs:
        return inputs
    positions = lm.family.position_ids(lm.model, inputs)
    return inputs if positions is None else {**inputs, "position_ids": positions}


def position_mask(lm, inputs, positions: str) -> torch.Tensor:
    """(batch, seq) bool: the decoder positions of a position set."""
    if positions == "vision":
        return lm.vision_mask(inputs)
    if positions == "text":
        return lm.text_mask(inputs)
    if positions == "all":
        return inputs["attention_mask"].bool()
    raise ValueError(f"unknown position set {positions!r}; use one of {POSITION_SETS}")


def final_logits(lm, inputs) -> torch.Tensor:
    """(batch, vocab) float32 logits at each row's final real position (only those are computed)."""
    last = lm.last_index(inputs)
    keep = torch.unique(last)  # the LM head runs on these positions only
    out = lm.model(**inputs, use_cache=False, logits_to_keep=keep)
    column = torch.searchsorted(keep, last)
    return out.logits[torch.arange(len(last), device=last.device), column].float()


def logits_at(lm, inputs, positions: torch.Tensor) -> torch.Tensor:
    """(batch, k, vocab) float32 logits at positions (batch, k) of each row (only those are computed)."""
    keep = torch.unique(positions)
    out = lm.model(**inputs, use_cache=False, logits_to_keep=keep)
    column = torch.searchsorted(keep, positions)
    rows = torch.arange(positions.shape[0], device=positions.device).unsqueeze(1)
    return out.logits[rows, column].float()


@dataclass
class CleanRun:
    activations: dict[str, torch.Tensor]  # source sites, as recorded
    logits: torch.Tensor  # (batch, vocab) at the final position, or (batch, k, vocab) at `read_at`
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # position set -> (batch, seq) bool
    read_at: torch.Tensor | None = None  # (batch, k) positions whose logits are read; None: the final one
    plain: set[str] = field(default_factory=set)  # recorded sites whose module returned a bare tensor


@torch.no_grad()
def run_clean(
    lm,
    inputs,
    sites: Iterable[str] = (),
    read_at: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> CleanRun:
    """The clean run. `read_at`: positions to read logits at (default: the final one); `prompt_mask`:
    (batch, seq) positions a patch may write (default: every real token)."""
    sites = list(dict.fromkeys(sites))
    plain, handles = set(), []
    for name in sites:  # a block may be skipped only if it returns a bare tensor (what ResumeAt returns)
        kind, layer = name.split(".")
        if kind in ("resid", "vision"):
            module = lm.family.site_module(lm.model, kind, int(layer))
            handles.append(
                module.register_forward_hook(
                    lambda m, a, out, name=name: plain.add(name) if isinstance(out, torch.Tensor) else None
                )
            )
    try:
        with Trace(lm, sites) as tr:
            logits = final_logits(lm, inputs) if read_at is None else logits_at(lm, inputs, read_at)
    finally:
        for h in handles:
            h.remove()
    masks = {p: position_mask(lm, inputs, p) for p in POSITION_SETS}
    if prompt_mask is not None:
        masks = {p: m & prompt_mask for p, m in masks.items()}
    return CleanRun(dict(tr.outputs), logits, masks, read_at, plain)


# ---------------------------------------------------------------- lean patched runs
#
# Nothing before a patch's first target layer can change, so a patched run need not compute it: the
# blocks before the first target pass their input through, and the block just before it returns the
# clean run's output, tiled once per patch. A stack of decoder patches also skips every vision-tower
# block (the tower's output is the clean one); a stack with tower patches skips the tower blocks before
# its first tower target and runs the whole decoder. The clean run records the states needed
# (`patch_resume_sites`, `knockout_resume_sites`); without them a run computes everything. Patching and
# knockouts resume the same way (`resume_plan`, `ResumeAt`).


def resume_plan(
    lm, clean: CleanRun, first_decoder: int | None = None, first_tower: int | None = None
) -> list[tuple[str, int]]:
    """[(block list path, first block to run)]: what a run that changes nothing before decoder layer
    `first_decoder` and vision-tower layer `first_tower` (None: that stack runs whole) may skip. A stack
    is skipped only where the clean run recorded the state before its first layer from a block that
    returns a bare tensor (`CleanRun.plain`), since that is what the resumed block returns."""
    plan = []
    if first_tower is not None:
        plan.append((lm.family.vision_layers, first_tower, site("vision", first_tower - 1)))
    if first_decoder is not None:
        plan.append((lm.family.decoder_layers, first_decoder, site("resid", first_decoder - 1)))
    skips = [
        (path, first)
        for path, first, state in plan
        if first > 0 and state in clean.activations and state in clean.plain
    ]
    return lm.family.resumable(lm.model, skips)  # Qwen3-VL: not where DeepStack reads or adds


def _passthrough(*args, **kwargs):
    return args[0] if args else kwargs["hidden_states"]


class ResumeAt:
    """For each (path, first) of a `resume_plan`, blocks 0..first-1 of `path` do not compute: block
    first-1 returns the clean run's state there tiled n times (the layout of `repeat_inputs`), earlier
    ones pass their input through. Instance `forward` attributes are restored on exit."""

    def __init__(self, lm, skips: list[tuple[str, int]], clean: CleanRun | None, n: int):
        self.items = []
        for path, first in skips:
            blocks = lm.model.get_submodule(path)
            kind = "vision" if path == lm.family.vision_layers else "resid"
            state = clean.activations[site(kind, first - 1)]
            tiled = torch.cat([state] * n, dim=0) if n > 1 else state
            for i in range(first):
                forward = (lambda *a, _s=tiled, **k: _s) if i == first - 1 else _passthrough
                self.items.append((blocks[i], forward))
        self.saved = []

    def __enter__(self):
        for block, forward in self.items:
            self.saved.append((block, block.__dict__.get("forward")))
            block.forward = forward
        return self

    def __exit__(self, *exc):
        for block, before in reversed(self.saved):
            if before is None:
                del block.forward
            else:
                block.forward = before
        self.saved.clear()
