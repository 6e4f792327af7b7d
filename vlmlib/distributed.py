"""Past one machine: observation passes sharded over processes, merged by all-reduce, exactly.

    torchrun --nproc_per_node 4 -m vlmlib.distributed --model paligemma-shapes --n-samples 10000 \\
        --readings cosine update contributions attention vision_tower --out obs.npz

    # or inside your own torchrun script, after torch.distributed.init_process_group:
    obs = observe_sharded(lm, samples, readings, batch_size=16)   # every rank gets the whole result

Every rank loads the same sample list (loading is seeded) and the same model. The list is cut into the
batches a single process would run (`batch_size`, then the token budget's halving), and rank r runs
batches r, r + W, r + 2W, ... (W processes). The statistics are sums (`vlmlib.observe.Moments`), so
merging is addition, but floating-point addition depends on its order; to give *exactly* the
single-process numbers, not just close ones, each encoded batch's readings go into their own slot of a
zero tensor, one slot per batch of the whole run; an all-reduce (SUM) fills every rank's copy (adding
zeros is exact) and every rank then merges the slots in the single process's order with
`Observation.merge`. The slots cost (batches x statistic size) numbers: 625 batches of a 10,000-sample
study times a few thousand per-layer values, a few MB. Maxima merge by MAX (order-free); pooled
features (n, L + 1, d) go into their rows of one zero tensor, summed the same way.

Exactness also needs each batch's forward pass to give the same numbers on every process: the same
model, dtype, device type and thread count (CPU kernels may reduce in another order with more threads).

Checkpoints larger than one GPU are a loading question, not this module's: transformers'
`device_map="auto"` (accelerate) places the layers over the GPUs of one process; `observe_sharded`
then runs one such process per node (see book/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .observe import (DEFAULT_MAX_TOKENS_PER_BATCH, DEFAULT_READINGS, Moments, Observation, encoded_within_budget,
                      observe_batch)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_starts(n_samples: int, batch_size: int) -> list[int]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return list(range(0, n_samples, batch_size))


def my_batches(n_samples: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """Indices of the batches rank `rank` runs (round-robin: ranks differ by at most one batch)."""
    return list(range(len(batch_starts(n_samples, batch_size))))[rank::world_size]


def _device(lm) -> torch.device:
    """Where collectives run: the model's GPU with NCCL, else the CPU (gloo)."""
    backend = dist.get_backend() if dist.is_initialized() else "gloo"
    return torch.device(lm.device) if backend == "nccl" else torch.device("cpu")


def observe_sharded(lm, samples: Sequence, readings: Iterable[str] = DEFAULT_READINGS, batch_size: int = 8,
                    attention: str = "sdpa", pool: Mapping[str, Callable] | None = None,
                    max_tokens_per_batch: int | None = DEFAULT_MAX_TOKENS_PER_BATCH, group=None) -> Observation:
    """`observe(lm, samples, ...)` with the batches shared among the processes of `group`; every rank
    returns the whole dataset's Observation, identical to one process's. Without torch.distributed
    initialised it is one process doing all of it."""
    readings = tuple(readings)
    rank, size = (dist.get_rank(group), dist.get_world_size(group)) if dist.is_initialized() else (0, 1)
    starts = batch_starts(len(samples), batch_size)
    # this rank's parts: (batch index, part index within the batch) -> Observation
    mine: dict[tuple[int, int], Observation] = {}
    for b in my_batches(len(samples), batch_size, rank, size):
        batch = samples[starts[b]:starts[b] + batch_size]
        for part, inputs in enumerate(encoded_within_budget(lm, batch, max_tokens_per_batch)):
            mine[(b, part)] = observe_batch(lm, inputs, readings, attention, pool)
    if size == 1:
        return _merge_in_order([mine[k] for k in sorted(mine)])
    return _all_reduce(mine, group, _device(lm))


def _merge_in_order(parts: list[Observation]) -> Observation:
    total = Observation()
    for obs in parts:
        total = total.merge(obs)  # the single process's own sequence of merges
    return total


def _all_reduce(mine: dict[tuple[int, int], Observation], group, device) -> Observation:
    # 1. the layout of the whole run: every part's sample count, statistics (with shapes) and features
    layout = {key: {"n": o.n_samples, "stats": {k: m.sum.shape for k, m in o.stats.items()},
                    "features": {k: [a.shape for a in v] for k, v in o.features.items()},
                    "feature_dtypes": {k: str(v[0].dtype) for k, v in o.features.items()}}
              for key, o in mine.items()}
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, layout, group=group)
    parts = {}
    for one in gathered:
        parts.update(one)
    order = sorted(parts)  # (batch, part): the single process's order
    slot = {key: i for i, key in enumerate(order)}
    stat_shapes = {}
    for key in order:
        for name, shape in parts[key]["stats"].items():
            stat_shapes.setdefault(name, tuple(shape))
    # 2. one zero tensor per statistic and moment, this rank's slots filled, summed over ranks
    reduced = {}
    for name, shape in sorted(stat_shapes.items()):
        for moment, dtype in (("sum", torch.float64), ("sumsq", torch.float64), ("count", torch.int64)):
            t = torch.zeros((len(order), *shape), dtype=dtype)
            for key, o in mine.items():
                if name in o.stats:
                    t[slot[key]] = torch.from_numpy(np.asarray(getattr(o.stats[name], moment)))
            t = t.to(device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            reduced[(name, moment)] = t.cpu().numpy()
    # pooled features: rows of one (n_total, ...) tensor per name
    feature_rows = {}
    offsets, n_total = {}, 0
    for key in order:
        offsets[key] = n_total
        n_total += parts[key]["n"]
    feature_names = sorted({f for key in order for f in parts[key]["features"]})
    for name in feature_names:
        first = next(k for k in order if name in parts[k]["features"])
        shape = tuple(parts[first]["features"][name][0][1:])
        dtype = torch.from_numpy(np.zeros(0, parts[first]["feature_dtypes"][name])).dtype
        t = torch.zeros((n_total, *shape), dtype=dtype)
        for key, o in mine.items():
            if name in o.features:
                rows = np.concatenate(o.features[name])
                t[offsets[key]:offsets[key] + len(rows)] = torch.from_numpy(rows)
        t = t.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        feature_rows[name] = t.cpu().numpy()
    # maxima: order-free
    names = sorted({k for o in mine.values() for k in o.maxima})
    all_names: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(all_names, names, group=group)
    names = sorted({k for one in all_names for k in one})
    maxima_t = torch.full((len(names),), -float("inf"), dtype=torch.float64)
    for i, k in enumerate(names):
        for o in mine.values():
            if k in o.maxima:
                maxima_t[i] = max(maxima_t[i].item(), o.maxima[k])
    maxima_t = maxima_t.to(device)
    dist.all_reduce(maxima_t, op=dist.ReduceOp.MAX, group=group)
    maxima_all = dict(zip(names, maxima_t.cpu().tolist()))
    # 3. rebuild every part and merge in order, as one process would
    rebuilt = []
    for key in order:
        i, info = slot[key], parts[key]
        stats = {name: Moments(reduced[(name, "sum")][i].copy(), reduced[(name, "sumsq")][i].copy(),
                               reduced[(name, "count")][i].copy()) for name in info["stats"]}
        features = {}
        for name, shapes in info["features"].items():
            start, chunks = offsets[key], []
            for shape in shapes:
                chunks.append(feature_rows[name][start:start + shape[0]])
                start += shape[0]
            features[name] = chunks
        rebuilt.append(Observation(stats, info["n"], {}, features))
    total = _merge_in_order(rebuilt)
    total.maxima = maxima_all
    return total


# ---------------------------------------------------------------- torchrun entry point


def main(argv: list[str] | None = None) -> int:
    from .data import load_samples
    from .models import load_model
    from .obscache import save_observation
    from .observe import READINGS

    ap = argparse.ArgumentParser(description="An observation pass sharded over torchrun processes.")
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", default="shapes")
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--readings", nargs="+", default=list(DEFAULT_READINGS), choices=READINGS)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", required=True, help="the .npz file rank 0 writes (vlmlib.obscache format)")
    args = ap.parse_args(argv)
    if "RANK" not in os.environ:
        ap.error("run me under torchrun (RANK/WORLD_SIZE unset), e.g. torchrun --nproc_per_node 2 -m vlmlib.distributed ...")
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if use_cuda else "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        lm = load_model(args.model, device=device, dtype=args.dtype)
        samples = load_samples(args.dataset, args.n_samples, seed=args.seed)
        obs = observe_sharded(lm, samples, args.readings, batch_size=args.batch_size)
        if dist.get_rank() == 0:
            save_observation(obs, args.out, header={"model": args.model, "dataset": args.dataset,
                                                    "n_samples": len(samples), "seed": args.seed,
                                                    "readings": args.readings, "world_size": dist.get_world_size()})
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["observe_sharded", "my_batches", "batch_starts", "world"]
