"""Sharded observation: two gloo processes give exactly one process's Observation."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from vlmlib.distributed import my_batches
from vlmlib.data import shapes_samples
from vlmlib.models import load_model
from vlmlib.obscache import load_observation, save_observation
from vlmlib.observe import observe

READINGS = ("cosine", "update", "contributions", "attention", "vision_tower", "pooled")
N_SAMPLES, BATCH = 7, 2  # 4 batches, the last short: rank 0 runs batches 0 and 2, rank 1 runs 1 and 3


def _settings(budget):
    return dict(readings=READINGS, batch_size=BATCH, max_tokens_per_batch=budget)


# budget 60 (rows x length) splits Qwen2-VL's 2-sample batches into single samples: the parts of a
# batch are slots of their own
CASES = [("paligemma-random", None), ("qwen2vl-random", 60)]


def _worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    from vlmlib.distributed import observe_sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for model, budget in CASES:
            lm = load_model(model, device="cpu", dtype="float32")
            obs = observe_sharded(lm, shapes_samples(N_SAMPLES, seed=5), **_settings(budget))
            save_observation(obs, f"{out_dir}/{model}-rank{rank}.npz")
    finally:
        dist.destroy_process_group()


def test_round_robin_batches():
    assert my_batches(7, 2, 0, 2) == [0, 2] and my_batches(7, 2, 1, 2) == [1, 3]
    assert my_batches(3, 2, 2, 3) == []  # more ranks than batches: an idle rank still takes part


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """One spawn of two gloo processes (process start-up is most of this test's time)."""
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("model,budget", CASES)
def test_two_processes_equal_one_exactly(sharded, model, budget):
    torch.set_num_threads(1)
    lm = load_model(model, device="cpu", dtype="float32")
    single = observe(lm, shapes_samples(N_SAMPLES, seed=5), progress=False, **_settings(budget))
    if budget is not None:  # the budget did split batches (one feature chunk per encoded part)
        assert len(single.features["vision"]) == N_SAMPLES
    for rank in (0, 1):
        got, _ = load_observation(sharded / f"{model}-rank{rank}.npz")
        assert got.n_samples == single.n_samples == N_SAMPLES
        assert sorted(got.stats) == sorted(single.stats)
        for name, m in single.stats.items():
            for part in ("sum", "sumsq", "count"):
                np.testing.assert_array_equal(getattr(got.stats[name], part), getattr(m, part), err_msg=name)
        assert got.maxima == single.maxima
        for name in single.features:
            assert len(got.features[name]) == len(single.features[name])
            np.testing.assert_array_equal(got.pooled(name), single.pooled(name))
