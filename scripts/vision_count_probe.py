"""How well can a deep organism's vision tower count on its own? (issue 24: where the 85% bar is lost)

Trains the recipe's vision stage alone (the tower and its throw-away heads, `vlmlib.organisms.recipes`)
for a number of steps and reads the count head, a linear map of the mean over cells, on held-out
scenes: accuracy by count at each checkpoint. If the tower's pooled features give the count linearly,
the decoder can read it with one uniform attention; if they do not, no decoder training will.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/vision_count_probe.py --tower-layers 16 --steps 3600
    ... --density 1   # adds a per-cell density head (each object's visible area spread over its cells,
                      # summing to 1): the count as the rounded sum of the cells' densities

Prints a table (steps, seconds, accuracy overall and by count); one thread, seeded, deterministic.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from vlmlib.data.scenes import cell_targets, scenes_samples
from vlmlib.organisms import recipes
from vlmlib.organisms.stages import make_optimizer, set_trainable, step_optimizer


def density_targets(samples) -> torch.Tensor:
    """(images, 64): each object's visible pixels spread over the cells they lie in, each object summing
    to 1, so an image's cells sum to its count (a density map, as in counting by density estimation)."""
    out = torch.zeros(len(samples), recipes.GRID * recipes.GRID)
    for row, s in enumerate(samples):
        visible = cell_targets(s.scene, recipes.GRID)["visible"].astype(np.float32)
        seen = visible.sum(axis=0) > 0  # an object hidden entirely contributes nothing
        out[row] = torch.from_numpy((visible[:, seen] / visible[:, seen].sum(axis=0)).sum(axis=1))
    return out


class DensityHeads(recipes.VisionHeads):
    """The recipe's heads plus a per-cell density (a linear map to one number per cell)."""

    def __init__(self, width: int, weight: float):
        super().__init__(width)
        self.density = torch.nn.Linear(width, 1)
        self.weight = weight

    def loss(self, cells, samples):
        predicted = self.density(cells.float()).squeeze(-1)
        # summed over an image's cells: the squared error of the count itself weighs as much as the cells'
        error = torch.nn.functional.mse_loss(predicted, density_targets(samples), reduction="sum")
        return super().loss(cells, samples) + self.weight * error / len(samples)


def count_accuracy(model, heads, processor, family: str, samples) -> dict[str, tuple[float, dict]]:
    """Held-out accuracy of each count readout: the count head; with a density head, its rounded sum."""
    answers = np.array([int(s.answer) for s in samples])
    guesses = {"head": [], "density": []}
    with torch.no_grad():
        for i in range(0, len(samples), 45):
            part = samples[i : i + 45]
            pixels = processor.image_processor([s.image for s in part], return_tensors="pt")
            cells = recipes.tower_cells(model, family, recipes.run_tower(model, family, pixels)).float()
            guesses["head"] += (heads.count(cells.mean(dim=1)).argmax(-1) + 1).tolist()
            if isinstance(heads, DensityHeads):
                guesses["density"] += heads.density(cells).squeeze(-1).sum(-1).round().clamp(1, 9).tolist()
    read = {}
    for name, guess in guesses.items():
        if guess:
            right = np.array(guess) == answers
            read[name] = float(right.mean()), {n: float(right[answers == n].mean()) for n in range(1, 10)}
    return read


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="paligemma", choices=["paligemma", "qwen2vl"])
    parser.add_argument("--tower-layers", type=int, default=12)
    parser.add_argument("--tower-width", type=int, default=0, help="the tower's width (0: the recipe's)")
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--every", type=int, default=600, help="steps between held-out readings")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test", type=int, default=450, help="held-out scenes per reading")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--density", type=float, default=0.0, help="weight of a per-cell density head (0: none)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = recipes.RecipeConfig(
        family=args.family, seed=args.seed, vision_steps=args.steps, tower_layers=args.tower_layers
    )
    torch.manual_seed(args.seed)
    if args.tower_width:  # the recipe's shape with a wider tower (MLP 4x, heads of 32)
        shape = recipes.deep_shape(args.family, "full", args.tower_layers)
        wider = dataclasses.replace(
            shape,
            vision_hidden=args.tower_width,
            vision_intermediate=4 * args.tower_width,
            vision_heads=args.tower_width // 32,
        )
        original, recipes.deep_shape = recipes.deep_shape, lambda *a, **k: wider
        try:
            model, processor = recipes.build(config)
        finally:
            recipes.deep_shape = original
    else:
        model, processor = recipes.build(config)
    torch.manual_seed(args.seed + 1)
    width = recipes.vision_width(model, args.family)
    heads = DensityHeads(width, args.density) if args.density else recipes.VisionHeads(width)
    params = recipes.stage_params(model, heads, args.family, "vision")
    set_trainable(model, params)
    hp = argparse.Namespace(lr=args.lr, warmup=100, weight_decay=config.weight_decay)
    opt, sched = make_optimizer(params, hp, args.steps)
    test = scenes_samples(args.test, recipes.SELECT_SEED, "test")
    print(
        f"{args.family}, tower {args.tower_layers} layers of width {width}, "
        f"{args.steps} steps, lr {args.lr}, density weight {args.density}",
        flush=True,
    )
    print(
        "| steps | seconds | readout | accuracy | " + " | ".join(str(n) for n in range(1, 10)) + " |",
        flush=True,
    )
    t0 = time.time()
    for step in range(args.steps):
        samples = recipes.image_samples(config, recipes.stream_start(config, "vision", step), 32, hints=False)
        pixels = processor.image_processor([s.image for s in samples], return_tensors="pt")
        model.train()
        cells = recipes.tower_cells(model, args.family, recipes.run_tower(model, args.family, pixels))
        step_optimizer(heads.loss(cells, samples), opt, sched, params)
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            model.eval()
            for name, (acc, by) in count_accuracy(model, heads, processor, args.family, test).items():
                cols = " | ".join(f"{by[n]:.0%}" for n in range(1, 10))
                print(f"| {step + 1} | {time.time() - t0:.0f} | {name} | {acc:.1%} | {cols} |", flush=True)


if __name__ == "__main__":
    main()
