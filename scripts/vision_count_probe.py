"""How well can a deep organism's vision tower count on its own? (issue 24: where the 85% bar is lost)

Trains the recipe's vision stage alone (the tower and its throw-away heads, `vlmlib.organisms.recipes`)
for a number of steps and reads the count head, a linear map of the mean over cells, on held-out
scenes: accuracy by count at each checkpoint. If the tower's pooled features give the count linearly,
the decoder can read it with one uniform attention; if they do not, no decoder training will.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/vision_count_probe.py --tower-layers 16 --steps 3600

Prints a table (steps, seconds, accuracy overall and by count); one thread, seeded, deterministic.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from vlmlib.data.scenes import scenes_samples
from vlmlib.organisms import recipes
from vlmlib.organisms.stages import make_optimizer, set_trainable, step_optimizer


def count_accuracy(model, heads, processor, family: str, samples) -> tuple[float, dict]:
    right = []
    with torch.no_grad():
        for i in range(0, len(samples), 45):
            part = samples[i : i + 45]
            pixels = processor.image_processor([s.image for s in part], return_tensors="pt")
            cells = recipes.tower_cells(model, family, recipes.run_tower(model, family, pixels))
            guess = heads.count(cells.float().mean(dim=1)).argmax(-1) + 1
            right += [int(g) == int(s.answer) for g, s in zip(guess.tolist(), part)]
    right = np.array(right)
    answers = np.array([int(s.answer) for s in samples])
    return float(right.mean()), {n: float(right[answers == n].mean()) for n in sorted(set(answers))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="paligemma", choices=["paligemma", "qwen2vl"])
    parser.add_argument("--tower-layers", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--every", type=int, default=600, help="steps between held-out readings")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test", type=int, default=450, help="held-out scenes per reading")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = recipes.RecipeConfig(family=args.family, seed=args.seed, vision_steps=args.steps)
    shape = dataclasses.replace(recipes.deep_shape(args.family), vision_layers=args.tower_layers)
    original = recipes.deep_shape
    recipes.deep_shape = lambda family, size="full": shape
    try:
        torch.manual_seed(args.seed)
        model, processor = recipes.build(config)
    finally:
        recipes.deep_shape = original
    torch.manual_seed(args.seed + 1)
    heads = recipes.VisionHeads(recipes.vision_width(model, args.family))
    params = recipes.stage_params(model, heads, args.family, "vision")
    set_trainable(model, params)
    hp = argparse.Namespace(lr=args.lr, warmup=100, weight_decay=config.weight_decay)
    opt, sched = make_optimizer(params, hp, args.steps)
    test = scenes_samples(args.test, recipes.SELECT_SEED, "test")
    print(f"{args.family}, tower {args.tower_layers} layers, {args.steps} steps, lr {args.lr}", flush=True)
    print("| steps | seconds | accuracy | " + " | ".join(str(n) for n in range(1, 10)) + " |", flush=True)
    t0 = time.time()
    for step in range(args.steps):
        samples = recipes.image_samples(config, recipes.stream_start(config, "vision", step), 32, hints=False)
        pixels = processor.image_processor([s.image for s in samples], return_tensors="pt")
        model.train()
        cells = recipes.tower_cells(model, args.family, recipes.run_tower(model, args.family, pixels))
        step_optimizer(heads.loss(cells, samples), opt, sched, params)
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            acc, by = count_accuracy(model, heads, processor, args.family, test)
            cols = " | ".join(f"{by.get(n, float('nan')):.0%}" for n in range(1, 10))
            print(f"| {step + 1} | {time.time() - t0:.0f} | {acc:.1%} | {cols} |", flush=True)


if __name__ == "__main__":
    main()
