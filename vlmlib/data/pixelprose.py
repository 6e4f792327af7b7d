"""PixelProse, the paper's dataset: parquet shards of image URLs and captions, images fetched and checked.

    samples = load_samples("pixelprose", 200, seed=0)             # vlmlib.data dispatches here
    samples = pixelprose_samples(200, shards="/data/pixelprose/")  # or a shard, a glob, a hub id
    samples.report                                                  # what was skipped, and why
    samples_provenance(samples)                                     # [{id, url, sha256, ...}] for results

Where the shards come from: `shards=`, else the environment variable PIXELPROSE_SHARDS, else the hub
dataset `tomg-group-umd/pixelprose` (streamed; needs network). A local value is a .parquet file, a
folder of them, or a glob. Images are cached in `cache_dir=` / PIXELPROSE_CACHE /
~/.cache/vlmlib/pixelprose, one file per URL, so a second run reads no network.

The schema is the dataset card's (checked on its README): `uid`, `url`, `key`, `status`,
`original_caption`, `vlm_model`, `vlm_caption`, among other columns. A `sha256` column, where a shard
has one, is checked against the downloaded bytes. Rows are streamed with the `datasets` library and
shuffled with a seeded buffer of 10,000 rows, so the same shards and seed give the same rows in the
same order (a different seed reaches further into the shards only by that buffer).

Each row's image is fetched (timeout, retries with backoff), then must decode, be at least
`min_side` pixels on its shorter side, and match its sha256 if the row has one; otherwise the row is
skipped and counted under its reason. Fetching stops at `n_samples` valid images; a run that runs out
of rows first says how many it found and why the others were skipped.

The counting question has no answer in PixelProse (the paper reads the model, not its accuracy), so
`Sample.answer` is None. With `single_category=True` only captions naming exactly one of the paper's
six probing categories (dog, cat, car, person, tree, building; whole words, plurals included) are
kept, and that category is the sample's label (paper section 3.1).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..util import atomic_write
from .samples import QUESTION, DatasetError, Sample, check_image_size, fit_image

HUB_ID = "tomg-group-umd/pixelprose"
CATEGORIES = ("dog", "cat", "car", "person", "tree", "building")
CAPTION_FIELDS = ("vlm_caption", "original_caption")
# Whole words, singular or plural ("persons" is rare; "people" is not counted as "person").
_CATEGORY_PATTERNS = {c: re.compile(rf"\b{c}s?\b", re.IGNORECASE) for c in CATEGORIES}
MAX_IMAGE_BYTES = 50 * 2**20  # refuse larger downloads: no real photo in the set needs more
USER_AGENT = "vlmlib-pixelprose/1 (research reproduction; https://github.com/)"


@dataclass
class WebSample(Sample):
    """A sample fetched from the web, with where it came from."""

    url: str = ""
    sha256: str = ""  # of the downloaded bytes


@dataclass
class FetchReport:
    """What a fetch used and skipped: counts per reason, a few examples of each."""

    valid: int = 0
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    from_cache: int = 0
    recached: int = 0  # cache files that no longer checked out, fetched again

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < 3:
            kept.append(detail)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()) or "none"
        return (
            f"PixelProse: {self.valid} valid images from {self.rows_read} rows "
            f"({self.from_cache} from the cache); skipped: {reasons}"
        )

    def as_dict(self) -> dict:
        return {
            "valid": self.valid,
            "rows_read": self.rows_read,
            "from_cache": self.from_cache,
            "recached": self.recached,
            "skipped": dict(self.skipped),
            "examples": self.examples,
        }


class FetchedSamples(list):
    """A list of samples that also carries the `FetchReport` of how it was gathered."""

    report: FetchReport


# ---------------------------------------------------------------- rows


def shard_files(shards: str) -> list[str]:
    """Local parquet files named by a file, a folder or a glob; [] when `shards` is not local."""
    path = Path(shards).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise DatasetError(f"PixelProse shards: the folder {path} holds no .parquet file")
        return files
    if any(ch in shards for ch in "*?["):
        files = sorted(glob.glob(str(path)))
        if not files:
            raise DatasetError(f"PixelProse shards: the pattern {shards!r} matches no file")
        return files
    return []


def stream_rows(shards: str, seed: int, buffer_size: int = 10_000):
    """Rows of the shards, shuffled with a seeded buffer (the same shards and seed: the same order)."""
    from datasets import load_dataset

    files = shard_files(shards)
    try:
        if files:
            ds = load_dataset("parquet", data_files=files, split="train", streaming=True)
        elif "/" in shards and not shards.startswith((".", "/", "~")):
            ds = load_dataset(shards, split="train", streaming=True)
        else:
            raise DatasetError(
                f"PixelProse shards {shards!r}: no such file or folder (give a .parquet file, a "
                f"folder of them, a glob, or the hub id {HUB_ID})"
            )
    except DatasetError:
        raise
    except Exception as e:  # offline, unknown repo, unreadable parquet
        raise DatasetError(
            f"cannot read the PixelProse shards {shards!r} ({type(e).__name__}: {e}). "
            "Without network, download the parquet files where there is network "
            f"(`hf download {HUB_ID} --repo-type dataset`) and set "
            "PIXELPROSE_SHARDS to that folder"
        ) from None
    columns = set(ds.column_names or [])
    missing = {"url"} - columns if columns else set()
    if missing:
        raise DatasetError(
            f"PixelProse shards {shards!r} have no 'url' column (columns: {sorted(columns)}); "
            "these are not PixelProse parquet files"
        )
    return _seeded_buffer_shuffle(ds, seed, buffer_size)


def _seeded_buffer_shuffle(rows, seed: int, buffer_size: int):
    """Rows in a seeded order, holding at most `buffer_size` of them (a stream is never loaded whole).
    Our own rather than `IterableDataset.shuffle`, which stalls for seconds on a shard smaller than its buffer
    (datasets 5.2); also shuffled: the order of a stream's first rows, not only of its tail."""
    import numpy as np

    rng = np.random.default_rng([seed, 0x9E3779B9])
    buffer = []
    for row in rows:
        if len(buffer) < buffer_size:
            buffer.append(row)
            continue
        i = int(rng.integers(buffer_size))
        yield buffer[i]
        buffer[i] = row
    for i in rng.permutation(len(buffer)):
        yield buffer[int(i)]


def category_of(caption: str | None) -> str | None:
    """The one probing category a caption names, or None if it names none or several."""
    if not caption:
        return None
    named = [c for c, pattern in _CATEGORY_PATTERNS.items() if pattern.search(caption)]
    return named[0] if len(named) == 1 else None


# ---------------------------------------------------------------- images


class FetchError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _download(url: str, timeout: float, retries: int, backoff: float) -> bytes:
    """The bytes at `url`; retries timeouts, connection errors and 5xx/429, not other HTTP errors."""
    last: FetchError | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                data = response.read(MAX_IMAGE_BYTES + 1)
            if len(data) > MAX_IMAGE_BYTES:
                raise FetchError("too large", f"{url}: more than {MAX_IMAGE_BYTES // 2**20} MB")
            return data
        except urllib.error.HTTPError as e:
            last = FetchError(f"HTTP {e.code}", f"{url}: HTTP {e.code}")
            if e.code != 429 and e.code < 500:
                raise last from None
        except (TimeoutError, OSError) as e:  # socket timeouts, refused connections, DNS failures
            reason = "timeout" if "timed out" in str(e) or isinstance(e, TimeoutError) else "unreachable"
            last = FetchError(reason, f"{url}: {type(e).__name__}: {e}")
        except ValueError as e:  # malformed URL
            raise FetchError("bad url", f"{url!r}: {e}") from None
    raise last


def check_image(data: bytes, min_side: int, sha256: str | None, url: str) -> Image.Image:
    """The decoded RGB image, or FetchError naming why it is unusable."""
    if sha256 and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise FetchError(
            "sha256 mismatch", f"{url}: the bytes do not match the row's sha256 (changed or replaced)"
        )
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im.convert("RGB")
    except Image.DecompressionBombError as e:
        raise FetchError("too large", f"{url}: {e}") from None
    except Exception as e:  # PIL raises many types for bad data
        raise FetchError("not an image", f"{url}: does not decode ({type(e).__name__})") from None
    if min(image.size) < min_side:
        raise FetchError(
            "too small", f"{url}: {image.size[0]}x{image.size[1]} px, shorter side below {min_side}"
        )
    return image


def _cache_path(cache_dir: Path, url: str) -> Path:
    return cache_dir / hashlib.sha256(url.encode()).hexdigest()[:40]


# ---------------------------------------------------------------- samples


def pixelprose_samples(
    n_samples: int,
    seed: int = 0,
    single_category: bool = False,
    shards: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    caption_field: str = "vlm_caption",
    min_side: int = 64,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.5,
    max_rows: int | None = None,
    question: str = QUESTION,
    image_size: int | None = None,
) -> FetchedSamples:
    """`n_samples` valid PixelProse samples (see the module docstring); `.report` says what was skipped.
    `image_size`: each image resized so that its longer side has that many pixels, after its checks
    (`fit_image`; None: as downloaded). The `sha256` recorded is the downloaded file's."""
    image_size = check_image_size(image_size)
    if caption_field not in CAPTION_FIELDS:
        raise DatasetError(f"caption_field must be one of {CAPTION_FIELDS}, not {caption_field!r}")
    shards = shards or os.environ.get("PIXELPROSE_SHARDS") or HUB_ID
    cache = Path(
        cache_dir or os.environ.get("PIXELPROSE_CACHE") or Path.home() / ".cache" / "vlmlib" / "pixelprose"
    )
    cache = cache.expanduser()
    report = FetchReport()
    samples = FetchedSamples()
    samples.report = report
    for row in stream_rows(shards, seed):
        if len(samples) >= n_samples or (max_rows is not None and report.rows_read >= max_rows):
            break
        report.rows_read += 1
        url, caption = row.get("url"), row.get(caption_field)
        uid = str(row.get("uid") or row.get("key") or url)
        if not url:
            report.skip("no url", uid)
            continue
        category = category_of(caption)
        if single_category and category is None:
            report.skip("caption names not exactly one category", uid)
            continue
        path = _cache_path(cache, url)
        cached = path.is_file()
        try:
            if cached:
                try:
                    data = path.read_bytes()
                    image = check_image(data, min_side, row.get("sha256"), url)
                except FetchError:  # a damaged cache file: drop it and fetch the image again
                    path.unlink()
                    report.recached += 1
                    cached = False
            if not cached:
                data = _download(url, timeout, retries, backoff)
                image = check_image(data, min_side, row.get("sha256"), url)
        except FetchError as e:
            report.skip(e.reason, str(e))
            continue
        if not cached:
            atomic_write(path, lambda f: f.write(data), binary=True)
        report.from_cache += cached
        samples.append(
            WebSample(
                image=fit_image(image, image_size),
                question=question,
                answer=None,
                caption=caption,
                category=category if single_category else None,
                id=uid,
                url=url,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        report.valid += 1
    if len(samples) < n_samples:
        what = "rows naming exactly one category" if single_category else "rows"
        error = DatasetError(
            f"PixelProse: only {len(samples)} valid images of the {n_samples} asked for after "
            f"reading {report.rows_read} rows from {shards!r} ({report.summary()}). Give more "
            "shards, fewer samples, or check the network"
            f"{' (only ' + what + ' count)' if single_category else ''}"
        )
        error.report = report
        raise error
    return samples


def samples_provenance(samples) -> list[dict]:
    """Which images a run used, to write into its results: id, url and sha256 of the downloaded file
    (web samples), and for every sample the sha256 of its decoded RGB pixels, which identifies an image
    whatever its source (shapes, imagefolder or PixelProse)."""
    records = []
    for s in samples:
        pixels = hashlib.sha256(f"{s.image.mode}{s.image.size}".encode() + s.image.tobytes()).hexdigest()
        records.append(
            {
                "id": s.id,
                "url": getattr(s, "url", None) or None,
                "sha256": getattr(s, "sha256", None) or None,
                "pixels_sha256": pixels,
            }
        )
    return records


__all__ = [
    "pixelprose_samples",
    "samples_provenance",
    "WebSample",
    "FetchReport",
    "FetchedSamples",
    "category_of",
    "check_image",
    "CATEGORIES",
    "HUB_ID",
]
