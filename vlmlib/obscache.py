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
the others load.

A damaged entry (truncated, empty, not an .npz, another entry's content, arrays whose shapes disagree)
is named in a warning with what is wrong, removed, recomputed and saved again: it never stops a run.
Refreshing: with `refresh=True` (or the environment variable `VLMLIB_CACHE_REFRESH`, which the book
runner sets for `--force`) no entry written before is read; the pass is computed again and its entry
replaced. The variable's value names the refresh: entries written under the same value (by the other
chapters of the same forced run) are read, so a forced run still computes each pass once. A cache folder
that cannot be written (read-only) is still read: a present entry is loaded (no lock taken), a missing
one is computed and not saved (one warning per folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .models import model_fingerprint
from .observation import DEFAULT_MAX_TOKENS_PER_BATCH, READINGS, Moments, Observation, observe
from .util import atomic_write, files_digest, package_files

CACHE_ENV = "VLMLIB_CACHE"
REFRESH_ENV = "VLMLIB_CACHE_REFRESH"  # set (not "0"): entries written before are not read, but replaced
FORMAT_VERSION = 1  # bump when the file layout changes
# What reading a damaged entry raises: a truncated or foreign zip (BadZipFile, EOFError, zlib.error, a bad
# CRC), an empty file (EOFError, ValueError), missing arrays or header fields (KeyError), bad JSON or
# shapes (ValueError, TypeError), an unreadable file (OSError).
DAMAGED = (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, KeyError, TypeError, IndexError)

_unwritable_warned: set[str] = set()  # cache folders already named as read-only (warned once each)


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


def check_observation(obs: Observation, header: Mapping, key: str, parts: Mapping | None = None) -> None:
    """Raise ValueError when a loaded entry is not the one asked for or its arrays disagree: another key
    in its header, another number of samples, no statistics, a statistic whose sum, sum of squares and
    count differ in shape or whose counts exceed the samples, pooled features that do not add up to the
    samples."""
    if not isinstance(header, Mapping) or header.get("key") != key:
        found = header.get("key") if isinstance(header, Mapping) else None
        raise ValueError(f"it holds the entry {found!r}, not {key!r}")
    n = obs.n_samples
    expected = (parts or {}).get("samples", {}).get("n")
    if expected is not None and n != expected:
        raise ValueError(f"it holds {n} samples, not {expected}")
    if not obs.stats and not obs.features:
        raise ValueError("it holds no statistics")
    for name, m in obs.stats.items():
        if not (m.sum.shape == m.sumsq.shape == m.count.shape):
            raise ValueError(
                f"statistic {name!r} has sums {m.sum.shape}, squares {m.sumsq.shape}, counts {m.count.shape}"
            )
        if m.count.size and (m.count.min() < 0 or m.count.max() > n):
            raise ValueError(f"statistic {name!r} counts samples outside 0..{n}")
    for name, chunks in obs.features.items():
        rows = sum(c.shape[0] if c.ndim else 0 for c in chunks)
        if rows != n or len({c.shape[1:] for c in chunks}) > 1:
            raise ValueError(f"pooled features {name!r} have {rows} rows in shapes that disagree (n = {n})")


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
    refresh: bool | str | None = None,
) -> Observation:
    """`observe(lm, samples, readings, ...)`, computed once and shared through a cache on disk.

    Readings within `shared` (the union of what several analyses read) are served from one pass of the
    whole union, so that they share it; other readings (e.g. "pooled", whose features grow with the
    samples) are cached under their own key. Without a cache folder (`cache_dir` or $VLMLIB_CACHE) this is
    `observe`. `pool` functions are not accepted: code cannot be part of a key. `refresh`: compute again
    and replace the entry instead of reading one written before (default: $VLMLIB_CACHE_REFRESH; a string
    names the refresh, and entries written under the same name are read).
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
    token = _refresh_token(refresh)
    path = folder / f"observation-{key}.npz"
    with contextlib.suppress(OSError):  # a folder that cannot be made: computed, not saved (below)
        folder.mkdir(parents=True, exist_ok=True)
    with _entry_lock(folder / f"observation-{key}.lock"):
        if path.is_file():
            obs = _read_entry(path, key, parts, token)
            if obs is not None:
                return obs
        obs = compute()
        header = {"key": key, "parts": parts, **({"refresh": token} if token else {})}
        try:
            save_observation(obs, path, header=header)
        except OSError as e:  # a read-only cache: the pass is used, not kept
            if str(folder) not in _unwritable_warned:
                _unwritable_warned.add(str(folder))
                warnings.warn(
                    f"observation cache {folder} cannot be written ({type(e).__name__}: {e}); passes "
                    "missing from it are computed and not saved",
                    stacklevel=2,
                )
    return obs


def _refresh_token(refresh: bool | str | None) -> str | None:
    """None: entries are read. Else the refresh's name: only entries written under it are read. True (or
    $VLMLIB_CACHE_REFRESH=1) gets a name of its own each call: no entry is read."""
    if refresh is None:
        refresh = os.environ.get(REFRESH_ENV, "")
    if isinstance(refresh, str):
        word = refresh.strip().lower()
        if word in ("", "0", "false", "no"):
            return None
        refresh = True if word in ("1", "true", "yes") else refresh
    if refresh is True:
        return "once-" + secrets.token_hex(8)
    return refresh or None


def _read_entry(path: Path, key: str, parts: Mapping, token: str | None) -> Observation | None:
    """The entry at `path` if it is sound and may be read (a refresh reads only its own entries); a damaged
    one is named in a warning and removed. None: compute it."""
    if token is not None and _written_under(path) not in (token, _UNKNOWN):
        return None  # written before this refresh: not read, computed again and replaced
    try:
        obs, header = load_observation(path)
        check_observation(obs, header, key, parts)
    except DAMAGED as e:  # a damaged or foreign file: name it, remove it, recompute, replace
        removed = "removed"
        try:
            path.unlink(missing_ok=True)
        except OSError as gone:
            removed = f"could not be removed ({gone})"
        warnings.warn(
            f"observation cache entry {path} is damaged or unreadable ({type(e).__name__}: {e}); it was "
            f"{removed}, and the pass is computed again",
            stacklevel=3,
        )
        return None
    if token is not None and header.get("refresh") != token:
        return None  # written before this refresh: computed again and replaced
    return obs


_UNKNOWN = object()


def _written_under(path: Path):
    """The refresh an entry was written under (None: none), read from its header alone; _UNKNOWN when the
    header cannot be read (the entry is then read whole, and found damaged)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["meta"]))["header"].get("refresh")
    except DAMAGED + (AttributeError,):
        return _UNKNOWN


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
    handle = None
    for mode in ("a", "r"):  # a read-only cache: lock on the file as it is, or (none there) not at all
        try:
            handle = open(path, mode)
            break
        except OSError:
            continue
    if handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            locked = True
        except OSError:  # a file system without locks: as without fcntl
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = [
    "observe_cached",
    "cache_key",
    "samples_digest",
    "save_observation",
    "load_observation",
    "resolve_cache_dir",
    "library_fingerprint",
    "check_observation",
    "CACHE_ENV",
    "REFRESH_ENV",
]
