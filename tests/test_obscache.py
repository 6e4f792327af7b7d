"""The shared observation cache: a loaded observation is the fresh one exactly; any change misses."""

import dataclasses

import numpy as np
import pytest
import torch

from vlmlib import Observation, load_model, observe, observe_cached, shapes_samples
from vlmlib.obscache import CACHE_ENV, load_observation, save_observation
from vlmlib.paper.chapters import chapter_specs, shared_readings

# What the book's observation chapters read, and the union their shared pass computes.
CHAPTER_READINGS = {name: spec.readings for name, spec in chapter_specs().items() if spec.readings}
BOOK_READINGS = shared_readings()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def lm():
    return load_model("paligemma-random", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def samples():
    return shapes_samples(5, seed=3)


def assert_same(a: Observation, b: Observation, names=None):
    names = sorted(a.stats) if names is None else names
    assert a.n_samples == b.n_samples
    for name in names:
        for part in ("sum", "sumsq", "count"):
            np.testing.assert_array_equal(
                getattr(a.stats[name], part), getattr(b.stats[name], part), err_msg=name
            )


def cache_files(folder):
    return sorted(p.name for p in folder.glob("observation-*.npz"))


def test_round_trip_file_is_exact(lm, samples, tmp_path):
    fresh = observe(lm, samples, readings=(*BOOK_READINGS, "pooled"), batch_size=2, progress=False)
    path = save_observation(fresh, tmp_path / "o.npz", header={"key": "k"})
    loaded, header = load_observation(path)
    assert header == {"key": "k"}
    assert sorted(loaded.stats) == sorted(fresh.stats) and loaded.maxima == fresh.maxima
    assert_same(loaded, fresh)
    np.testing.assert_array_equal(loaded.pooled("vision"), fresh.pooled("vision"))
    assert not list(tmp_path.glob("*.tmp*")), "a temporary file was left behind"


def test_chapters_share_one_pass_and_match_their_own(lm, samples, tmp_path):
    """Every observation chapter's statistics from the shared union pass equal its own pass exactly,
    and only the first chapter computes (the cache then holds one entry)."""
    calls = []
    import vlmlib.obscache as oc

    real = oc.observe
    oc.observe = lambda *a, **k: calls.append(k["readings"]) or real(*a, **k)
    try:
        for chapter, readings in CHAPTER_READINGS.items():
            shared = observe_cached(
                lm, samples, readings, batch_size=2, cache_dir=tmp_path, progress=False, shared=BOOK_READINGS
            )
            own = observe(lm, samples, readings=readings, batch_size=2, progress=False)
            assert set(own.stats) <= set(shared.stats), chapter
            assert_same(shared, own, names=sorted(own.stats))
    finally:
        oc.observe = real
    assert calls == [BOOK_READINGS], calls
    assert len(cache_files(tmp_path)) == 1


def test_any_change_misses(lm, samples, tmp_path):
    base = dict(readings=("cosine",), batch_size=2, cache_dir=tmp_path, progress=False)
    observe_cached(lm, samples, **base)
    observe_cached(lm, samples, **base)
    assert len(cache_files(tmp_path)) == 1  # a hit writes nothing new
    variants = [
        lambda: observe_cached(lm, samples[:4], **base),  # fewer samples
        lambda: observe_cached(lm, shapes_samples(5, seed=4), **base),  # another seed
        lambda: observe_cached(
            lm, [dataclasses.replace(samples[0], question="How many ?"), *samples[1:]], **base
        ),
        lambda: observe_cached(lm, samples, **{**base, "batch_size": 3}),
        lambda: observe_cached(lm, samples, **base, key_extra={"dataset": "other"}),
        lambda: observe_cached(lm, samples, **{**base, "readings": ("pooled",)}),
    ]
    for i, run in enumerate(variants):
        run()
        assert len(cache_files(tmp_path)) == 2 + i, f"variant {i} hit the cache"
    # another model (same family, other weights): another key
    other = load_model("qwen2vl-random", device="cpu", dtype="float32")
    observe_cached(other, samples, **base)
    assert len(cache_files(tmp_path)) == 2 + len(variants)


def test_changed_weights_file_misses(samples, tmp_path, monkeypatch):
    """A model folder whose weights change gets a new key (the model fingerprint)."""
    from vlmlib.obscache import cache_key
    from vlmlib.organisms.builders import tiny_paligemma

    net, processor = tiny_paligemma()
    folder = tmp_path / "model"
    net.save_pretrained(folder)
    processor.save_pretrained(folder)
    lm = load_model(str(folder), device="cpu", dtype="float32")
    key1, _ = cache_key(lm, samples, ("cosine",), 2)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    net.save_pretrained(folder)
    key2, _ = cache_key(lm, samples, ("cosine",), 2)
    assert key1 != key2


def test_env_folder_and_no_cache(lm, samples, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    observe_cached(lm, samples[:2], ("update",), batch_size=2, progress=False)
    assert len(cache_files(tmp_path / "env")) == 1
    monkeypatch.delenv(CACHE_ENV)
    # no folder: plain observe
    got = observe_cached(lm, samples[:2], ("update",), batch_size=2, progress=False)
    assert "decoder.update.vision" in got


def test_damaged_entry_is_recomputed(lm, samples, tmp_path):
    first = observe_cached(lm, samples[:2], ("cosine",), batch_size=2, cache_dir=tmp_path, progress=False)
    (path,) = tmp_path.glob("observation-*.npz")
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="unreadable"):
        again = observe_cached(lm, samples[:2], ("cosine",), batch_size=2, cache_dir=tmp_path, progress=False)
    assert_same(first, again)
    assert load_observation(path)[0].n_samples == 2  # replaced by a good entry


def test_bad_readings_named(lm, samples, tmp_path):
    with pytest.raises(ValueError, match="unknown readings"):
        observe_cached(lm, samples, ("cosines",), cache_dir=tmp_path)


def test_chapters_at_once_compute_a_pass_once(lm, samples, tmp_path, monkeypatch):
    """Two chapters asking for the same entry at the same time: one computes, the other waits and loads."""
    import threading
    import time

    import vlmlib.obscache as obscache

    calls = []

    def slow_observe(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other caller to arrive while the pass runs
        return observe(*args, **kwargs)

    monkeypatch.setattr(obscache, "observe", slow_observe)
    got = [None, None]

    def chapter(i, readings):
        got[i] = observe_cached(
            lm,
            samples,
            readings=readings,
            batch_size=4,
            cache_dir=tmp_path,
            progress=False,
            shared=BOOK_READINGS,
        )

    threads = [
        threading.Thread(target=chapter, args=(i, CHAPTER_READINGS[n]))
        for i, n in enumerate(("01_representations", "04_attention_modality"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(cache_files(tmp_path)) == 1
    assert_same(got[0], got[1])
