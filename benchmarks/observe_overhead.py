"""\
What the observation pass costs over a plain forward, on the organisms or real-width slices: one ratio each.

    nice -n 5 .venv/bin/python benchmarks/observe_overhead.py [--repeats 15] [--threads 1] [--profile]
    .venv/bin/python benchmarks/observe_overhead.py --models qwen2vl-2b paligemma-3b-448 \
        --depths 2 3 --n-samples 2 --batch-size 2 --repeats 5 --image-size 448

The same pre-encoded batches (24 shapes samples, batch 16, as benchmarks/book_compute.py) run as a
plain forward without LM head and as `observe_batch` with the book's union of readings; repeats are
interleaved (plain, observe, plain, observe, ...) so that a busy machine slows both alike, and the
ratio is taken per repeat pair, then the median. `--profile` prints where the observation pass
spends its time (torch.profiler, CPU ops by self time).

A stand-in name (qwen2vl-2b, paligemma-3b-448) times a random-weight slice of the real checkpoint at
its real width: `--depths D V` decoder and vision layers. The readings cost per token and layer
O(width) against the layer's O(width^2), so the organisms' width (128) overstates what a real model
pays; the slice measures it at the real width on a CPU, where the whole model would be too slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from book_compute import load_standin  # noqa: E402  (this folder is on the path when run as a script)

from vlmlib.data import load_samples  # noqa: E402
from vlmlib.models import load_model  # noqa: E402
from vlmlib.observation import observe_batch  # noqa: E402
from vlmlib.organisms.builders import STANDIN_NAMES  # noqa: E402
from vlmlib.paper.chapters import shared_readings  # noqa: E402


def load(name: str, depths: list[int]):
    if name not in STANDIN_NAMES:
        return load_model(name, device="cpu", dtype="float32")
    return load_standin(name, "full", tuple(depths), device="cpu", dtype="float32")


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


@torch.no_grad()
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["paligemma-shapes", "qwen2vl-shapes"])
    ap.add_argument("--n-samples", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--readings", nargs="+", default=list(shared_readings()))
    ap.add_argument("--profile", action="store_true")
    ap.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="resize the images to PX x PX (the shapes images are small: Qwen2-VL makes 4 tokens of one)",
    )
    ap.add_argument(
        "--depths",
        nargs=2,
        type=int,
        default=[2, 3],
        metavar=("DECODER", "VISION"),
        help="layers of a stand-in's full-width slice (default 2 3)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{args.n_samples} samples, batch {args.batch_size}, images {args.image_size or 'as made'} px, "
        f"{args.threads} thread(s), readings {args.readings}; median of {args.repeats} interleaved repeats"
    )
    print(
        "| model | tokens a sample (image) | plain forward ms | observation pass ms "
        "| ratio (median of pairs) |\n"
        "|---|---|---|---|---|"
    )
    for name in args.models:
        lm = load(name, args.depths)
        samples = load_samples("shapes", args.n_samples, seed=0)
        if args.image_size:
            size = (args.image_size, args.image_size)
            samples = [dataclasses.replace(s, image=s.image.resize(size)) for s in samples]
        bs = args.batch_size
        encoded = [lm.encode_samples(samples[i : i + bs]) for i in range(0, len(samples), bs)]

        def plain():
            for inputs in encoded:
                lm.forward_base(inputs)

        def observed():
            for inputs in encoded:
                observe_batch(lm, inputs, args.readings)

        plain(), observed()  # warm-up
        pairs = [(timed(plain), timed(observed)) for _ in range(args.repeats)]
        p = statistics.median(a for a, _ in pairs)
        o = statistics.median(b for _, b in pairs)
        ratio = statistics.median(b / a for a, b in pairs)
        tokens, image = (
            int(m.sum(1).max()) for m in (encoded[0]["attention_mask"], lm.vision_mask(encoded[0]))
        )
        print(f"| {name} | {tokens} ({image}) | {1000 * p:.0f} | {1000 * o:.0f} | {ratio:.3f} |", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                observed()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                plain()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
