"""Pieces of a staged training run shared by both recipes (train.py: the pocket organisms on `shapes`;
recipes.py: the deep organisms on `scenes`): where the vision tower and projector are, which
parameters train, the optimizer and its schedule, and saving an organism in 16-bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vlmlib.families import family_named


def projector(model, family: str) -> torch.nn.Module:
    return model.get_submodule(family_named(family).projector)


def vision_tower(model, family: str) -> torch.nn.Module:
    return model.get_submodule(family_named(family).vision_tower)


def vision_params(model, family: str):
    """The vision encoder's parameters without the projector's (Qwen2-VL's tower contains its merger)."""
    skip = {id(p) for p in projector(model, family).parameters()}
    return [p for p in vision_tower(model, family).parameters() if id(p) not in skip]


def make_optimizer(params, config, steps: int):
    """AdamW over the trainable `params` and its schedule: `config.warmup` linear warm-up steps to
    `config.lr`, then cosine decay to 10% at `steps`."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98))

    def schedule(step):
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = min(1.0, (step - config.warmup) / max(1, steps - config.warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def step_optimizer(loss, opt, sched, params):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def set_trainable(model, params):
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def save(model, processor, out: str | Path, log: dict, dtype=torch.bfloat16):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.to(dtype)
    try:
        model.save_pretrained(out)
        processor.save_pretrained(out)
    finally:
        model.to(torch.float32)
        model.load_state_dict(state)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
