"""What lean knockout passes (resumed from the clean run at the first knocked layer) save over passes
through the whole decoder, on the embedded organisms: chapter 8's sweep, one ratio each.

    nice -n 5 .venv/bin/python benchmarks/knockout_lean.py [--repeats 3] [--threads 1]

`knockout_experiment` with lean=True and lean=False on the same samples (200 shapes samples, batch 16,
128 rows per pass, as chapter 8), after a one-batch warm-up of each; repeats interleaved (lean, full,
lean, full, ...) so that a busy machine slows both alike. CPU seconds of this process: the median per
mode and the median of the per-pair ratios. The largest difference between the two modes' per-sample
measures is printed as a check.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlmlib.data import load_samples  # noqa: E402
from vlmlib.interventions.knockout import QUERY_SETS, knockout_experiment, layer_sweep  # noqa: E402
from vlmlib.models import load_model  # noqa: E402
from vlmlib.paper.groups import scaled_size  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["paligemma-shapes", "qwen2vl-shapes"])
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-rows", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"{args.n_samples} samples, batch {args.batch_size}, max_rows {args.max_rows}, "
        f"{args.threads} thread(s); median of {args.repeats} interleaved repeats, CPU seconds"
    )
    print(
        "| model | knockouts | full s | lean s | lean / full (median of pairs) | max |Δ measure| |\n"
        "|---|---|---|---|---|---|"
    )
    samples = load_samples("shapes", args.n_samples, seed=0)
    for name in args.models:
        lm = load_model(name, device="cpu", dtype="float32")
        L = lm.num_layers
        knockouts = [ko for q in QUERY_SETS for ko in layer_sweep(L, q, window=scaled_size(L))]

        def timed(lean: bool, some=samples):
            start = time.process_time()
            result = knockout_experiment(
                lm,
                some,
                knockouts,
                batch_size=args.batch_size,
                target="auto",
                max_rows=args.max_rows,
                lean=lean,
            )
            return time.process_time() - start, result

        timed(True, samples[: args.batch_size]), timed(False, samples[: args.batch_size])  # warm-up
        pairs, results = [], {}
        for _ in range(args.repeats):
            (lean_s, results[True]), (full_s, results[False]) = timed(True), timed(False)
            pairs.append((lean_s, full_s))
        gap = max(
            float(np.abs(results[True].knocked[m] - results[False].knocked[m]).max())
            for m in ("logprob", "logit_diff")
        )
        lean_s, full_s = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        ratio = statistics.median(lean / full for lean, full in pairs)
        print(
            f"| {name} | {len(knockouts)} | {full_s:.1f} | {lean_s:.1f} | {ratio:.2f} | {gap:.1e} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
