"""One observation pass per (model, samples, settings), shared by every chapter that needs it.

    from vlmlib.obscache import observe_cached
    obs = observe_cached(lm, samples, readings=("cosine", "vision_tower"), batch_size=16,
                         key_extra={"dataset": dataset, "seed": seed})

Several analyses may each read a few statistics of the same unchanged forward pass: the caller names
the union of what they all read (`shared=`, e.g. the book's chapters 1, 2, 4 and 6,
`vlmlib.paper.chapters.shared_readings()`). The first of them to run computes the union once and saves
it; the others load it. Their own statistics are the same numbers either way: a reading never changes
the forward pass, and the union's attention function computes the same fused SDPA output
(tests/test_obscache.py checks every chapter's statistics against its own pass, exactly).

Where the cache lives: `cache_dir` if given, else the environment variable `VLMLIB_CACHE`; with
neither, nothing is cached and `observe_cached` is `observe`. The book runner sets `VLMLIB_CACHE` to a
folder under its build directory (never a user's dataset folder), so `python -m vlmlib book` shares one
pass per part.

The key (`cache_key`) holds everything the numbers depend on, so anything that changes misses the
cache: the model (name and weights, by `vlmlib.models.model_fingerprint`: sha256 of small files, size
and mtime of large ones), its dtype, device type and prompt settings; the samples themselves (ids, texts
and image pixels hashed, so a changed dataset file or another seed or `n_samples` gives another key);
the readings, batch size, attention mode and token budget; the library's code (`library_fingerprint`,
one hash of every module of the package) and the torch / transformers versions; plus the caller's
`key_extra` (e.g. dataset name and seed, for a readable record).

A cache entry is one `.npz` file (arrays and a JSON header; no pickled objects), written to a temporary
name and renamed into place, so a reader never sees half a file. Chapters run at once (the runner's
`--jobs`) that need the same entry take turns on a lock file beside it: the first computes and saves,
the others load. An entry that cannot be read is recomputed and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .models import model_fingerprint
from .observation import DEFAULT_MAX_TOKENS_PER_BATCH, READINGS, Moments, Observation, observe
from .util import atomic_write, files_digest, package_files

CACHE_ENV = "VLMLIB_CACHE"
FORMAT_VERSION = 1  # bump when the file layout changes


def library_fingerprint() -> str:
    """One hash of every Python module of the package: any code change misses the cache."""
    package = Path(__file__).resolve().parent
    return files_digest(package_files(package), root=package)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder to cache in: `cache_dir`, else $VLMLIB_CACHE, else None (no caching)."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or None
    return Path(chosen).expanduser() if chosen is not None else None


# ---------------------------------------------------------------- the key


def samples_digest(samples: Sequence) -> str:
    """sha256 over every sample's id, texts and image pixels (mode, size and bytes), in order."""
    digest = hashlib.sha256()
    for s in samples:
        fields = {k: getattr(s, k, None) for k in ("id", "question", "answer", "caption", "category")}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode() + b"\0")
        image = getattr(s, "image", None)
        if image is not None:
            digest.update(f"{image.mode}:{image.size}".encode() + b"\0" + image.tobytes() + b"\0")
    return digest.hexdigest()[:24]


def cache_key(
    lm,
    samples: Sequence,
    readings: Iterable[str],
    batch_size: int,
    attention: str = "sdpa",
    max_tokens_per_batch: int | None = DEFAULT_MAX_TOKENS_PER_BATCH,
    key_extra: Mapping | None = None,
) -> tuple[str, dict]:
    """(key, parts): `parts` is everything the observation depends on; `key` its hash."""
    import torch
    import transformers

    parts = {
        "format": FORMAT_VERSION,
        "model": model_fingerprint(lm.name),
        "dtype": str(lm.model.dtype),
        "device": str(torch.device(lm.device).type),
        "prompt": lm.prompt_settings(),
        "samples": {
            "n": len(samples),
            "ids": [getattr(s, "id", None) for s in samples],
            "content": samples_digest(samples),
        },
        "readings": sorted(set(readings)),
        "batch_size": int(batch_size),
        "attention": attention,
        "max_tokens_per_batch": max_tokens_per_batch,
        "code": library_fingerprint(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "extra": dict(key_extra or {}),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return key, parts


# ---------------------------------------------------------------- file format


def save_observation(obs: Observation, path: str | os.PathLike, header: Mapping | None = None) -> Path:
    """Write `obs` to one .npz file, atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(obs.stats)
    arrays = {}
    for i, name in enumerate(names):
        m = obs.stats[name]
        arrays[f"s{i}_sum"], arrays[f"s{i}_sumsq"], arrays[f"s{i}_count"] = m.sum, m.sumsq, m.count
    feature_names = sorted(obs.features)
    for i, name in enumerate(feature_names):
        for j, chunk in enumerate(obs.features[name]):
            arrays[f"f{i}_{j}"] = chunk
    meta = {
        "stats": names,
        "features": {n: len(obs.features[n]) for n in feature_names},
        "feature_order": feature_names,
        "n_samples": obs.n_samples,
        "maxima": obs.maxima,
        "header": dict(header or {}),
    }
    arrays["meta"] = np.array(json.dumps(meta, default=str))
    return atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)


def load_observation(path: str | os.PathLike) -> tuple[Observation, dict]:
    """(Observation, header) from a file written by `save_observation` (no pickle is ever loaded)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        stats = {
            name: Moments(data[f"s{i}_sum"], data[f"s{i}_sumsq"], data[f"s{i}_count"])
            for i, name in enumerate(meta["stats"])
        }
        features = {
            name: [data[f"f{i}_{j}"] for j in range(meta["features"][name])]
            for i, name in enumerate(meta["feature_order"])
        }
    maxima = {k: float(v) for k, v in meta["maxima"].items()}
    return Observation(stats, int(meta["n_samples"]), maxima, features), meta["header"]


# ---------------------------------------------------------------- the cached pass


def observe_cached(
    lm,
    samples: Sequence,
    readings: Iterable[str],
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    key_extra: Mapping | None = None,
    shared: Iterable[str] = (),
    attention: str = "sdpa",
    progress: bool = True,
    desc: str = "observe",
    max_tokens_per_batch: int | None = DEFAULT_MAX_TOKENS_PER_BATCH,
) -> Observation:
    """`observe(lm, samples, readings, ...)`, computed once and shared through a cache on disk.

    Readings within `shared` (the union of what several analyses read) are served from one pass of the
    whole union, so that they share it; other readings (e.g. "pooled", whose features grow with the
    samples) are cached under their own key. Without a cache folder (`cache_dir` or $VLMLIB_CACHE) this is
    `observe`. `pool` functions are not accepted: code cannot be part of a key.
    """
    readings = tuple(dict.fromkeys(readings))
    unknown = set(readings) - set(READINGS)
    if unknown:
        raise ValueError(f"unknown readings {sorted(unknown)}; known: {READINGS}")
    if not readings:
        raise ValueError("no readings asked for; name at least one of " + ", ".join(READINGS))
    shared = tuple(dict.fromkeys(shared))
    unknown = set(shared) - set(READINGS)
    if unknown:
        raise ValueError(f"unknown shared readings {sorted(unknown)}; known: {READINGS}")
    run = shared if shared and set(readings) <= set(shared) else readings
    folder = resolve_cache_dir(cache_dir)

    def compute() -> Observation:
        return observe(
            lm,
            samples,
            readings=run,
            batch_size=batch_size,
            attention=attention,
            progress=progress,
            desc=desc,
            max_tokens_per_batch=max_tokens_per_batch,
        )

    if folder is None:
        return compute()
    key, parts = cache_key(lm, samples, run, batch_size, attention, max_tokens_per_batch, key_extra)
    path = folder / f"observation-{key}.npz"
    folder.mkdir(parents=True, exist_ok=True)
    with _entry_lock(folder / f"observation-{key}.lock"):
        if path.is_file():
            try:
                obs, header = load_observation(path)
                if header.get("key") == key:
                    return obs
                warnings.warn(f"observation cache {path.name} holds another key; recomputing", stacklevel=2)
            except (OSError, ValueError, KeyError) as e:  # a damaged or foreign file: recompute, replace
                warnings.warn(f"observation cache {path.name} unreadable ({e}); recomputing", stacklevel=2)
        obs = compute()
        save_observation(obs, path, header={"key": key, "parts": parts})
    return obs


@contextlib.contextmanager
def _entry_lock(path: Path):
    """Held while an entry is looked up and, if missing, computed: chapters run at once that need the
    same pass wait for the first to save it instead of each computing it. An flock, released when its
    holder exits or dies; without fcntl (Windows) nothing is locked and both compute, as before."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "observe_cached",
    "cache_key",
    "samples_digest",
    "save_observation",
    "load_observation",
    "resolve_cache_dir",
    "library_fingerprint",
    "CACHE_ENV",
]
