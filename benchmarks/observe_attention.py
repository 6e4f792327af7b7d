"""How to read attention by modality without slowing the observation pass: a measurement.

    .venv/bin/python benchmarks/observe_attention.py [--repeats 5] [--batch-size 4] [--threads 1]

Times one batch through tiny random-weight models (median of repeats, after a warm-up) at two
prompt lengths: the default 64x64 image and a 224x224 image (PaliGemma: 784 image tokens, where a
(T, T) weight matrix per head starts to cost). Configurations:

    forward sdpa          plain forward, fused attention everywhere (the floor)
    forward all-eager     plain forward, eager attention everywhere
    observe, no attention engine readings that need no attention weights (fused attention)
    observe, fused masses all readings; attention masses from one extra fused call with indicator values
    observe, eager decoder all readings; decoder switched to eager, weights read by hooks; vision tower fused
    observe, all-eager    all readings; the whole model eager (what loading with
                          attn_implementation="eager" gives)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlmlib.data import load_samples
from vlmlib.models import wrap_model
from vlmlib.observation import DEFAULT_READINGS, observe_batch
from vlmlib.organisms.builders import TinyShape, tiny_paligemma, tiny_qwen2vl

NO_ATTENTION = tuple(r for r in DEFAULT_READINGS if r != "attention")


def build(family: str, image_size: int, implementation: str):
    builder = tiny_paligemma if family == "paligemma" else tiny_qwen2vl
    net, processor = builder(TinyShape(image_size=image_size))
    net.set_attn_implementation(implementation)
    return wrap_model(
        net,
        processor,
        f"{family}-random-{image_size}px",
        False,
        "benchmark",
        torch.device("cpu"),
        torch.float32,
    )


def median_seconds(fns, repeats: int) -> list[float]:
    """Median time of each function; repeats interleaved round-robin, so that a busy machine slows
    every configuration alike rather than whichever ran during the busy spell."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, row in zip(fns, times):
            start = time.perf_counter()
            fn()
            row.append(time.perf_counter() - start)
    return [statistics.median(row) for row in times]


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"median of {args.repeats} repeats, batch {args.batch_size}, {args.threads} CPU thread(s); "
        "ms per batch"
    )
    print(
        "| model | tokens | forward sdpa | forward all-eager | observe, no attention | observe, fused masses "
        "| observe, eager decoder | observe, all-eager |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family in ("paligemma", "qwen2vl"):
        for size in args.sizes:
            samples = load_samples("shapes", args.batch_size, seed=0, image_size=size)
            fused = build(family, size, "sdpa")
            eager = build(family, size, "eager")
            eager.model.load_state_dict(fused.model.state_dict())
            inputs = fused.encode_samples(samples)
            cells = median_seconds(
                [
                    lambda: fused.forward(inputs),
                    lambda: eager.forward(inputs),
                    lambda: observe_batch(fused, inputs, NO_ATTENTION),
                    lambda: observe_batch(fused, inputs, DEFAULT_READINGS, "sdpa"),
                    lambda: observe_batch(fused, inputs, DEFAULT_READINGS, "eager"),
                    lambda: observe_batch(eager, inputs, DEFAULT_READINGS, "eager"),
                ],
                args.repeats,
            )
            tokens = inputs["input_ids"].shape[1]
            print(
                f"| {family} {size}px | {tokens} | " + " | ".join(f"{1000 * c:.0f}" for c in cells) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
