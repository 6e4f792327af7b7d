"""Peak memory of one observation pass with and without the LM head, on a saved checkpoint.

    python benchmarks/observe_logits_memory.py FOLDER --mode base   # as vlmlib.observation runs it
    python benchmarks/observe_logits_memory.py FOLDER --mode full   # the whole model, logits included

Run each mode in its own process (the peak resident set only grows). FOLDER is any checkpoint, e.g.
a full-size stand-in written by scripts/full_standins.py. The image is a random 1280x960 photo:
1,564 image tokens for Qwen2-VL at its default pixel budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    import numpy as np
    from PIL import Image

    from vlmlib.data import QUESTION
    from vlmlib.models import load_model
    from vlmlib.observation import DEFAULT_READINGS, observe_batch

    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--mode", choices=["base", "full"], required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--size", default="1280x960")
    args = parser.parse_args(argv)
    width, height = map(int, args.size.split("x"))

    lm = load_model(args.folder, device="cpu", dtype=args.dtype)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    inputs = lm.encode([image], [QUESTION])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.mode == "full":
        lm = dataclasses.replace(lm)
        lm.forward_base = lm.forward  # the engine's path before it skipped the LM head
    start = time.time()
    obs = observe_batch(lm, inputs, DEFAULT_READINGS)
    seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {
                "mode": args.mode,
                "dtype": args.dtype,
                "tokens": int(inputs["input_ids"].shape[1]),
                "peak_rss_gib_after_load": round(before, 2),
                "peak_rss_gib": round(peak, 2),
                "pass_gib": round(peak - before, 2),
                "seconds": round(seconds, 1),
                "cosine_vision_layer0": float(obs.mean("decoder.cosine.vision")[0]),
            }
        )
    )


if __name__ == "__main__":
    main()
