"""Datasets: the synthetic `shapes` set and local `imagefolder` folders.

Every dataset yields `Sample`s. A chapter asks `load_samples(dataset, n_samples, seed)` and never
cares where the images came from.

`shapes` is drawn on a 4x4 grid of cells, at most one object per cell, with a jittered size and
position, so that objects never overlap and a count cannot be read off the amount of colour alone
(big objects in small counts, small ones in large counts are equally likely). Each sample has its
own random stream, `default_rng([split, seed, index])`: the `train` and `test` splits never share
a stream, and sample i is the same whatever n_samples is.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..params import ParameterError, as_int
from .palette import BACKGROUNDS, CAPTION_PROMPT, COLOURS, PLURALS, SHAPES, draw_shape
from .pixelprose import pixelprose_samples
from .samples import (
    QUESTION,
    DatasetError,
    Sample,
    check_image_size,
    check_question,
    fit_image,
    with_question,
)
from .scenes import SCENE_SIZE, scenes_samples

MAX_OBJECTS = 6
GRID = 4
SHAPES_SIZE = 64  # pixels per side of a `shapes` image unless asked otherwise (the organisms' training size)
SPLITS = {"train": 1, "test": 2}

# Every word the synthetic data can produce: the embedded models' word-level vocabulary.
VOCABULARY = (
    QUESTION.split()
    + CAPTION_PROMPT.split()
    + [str(n) for n in range(1, MAX_OBJECTS + 1)]
    + list(COLOURS)
    + list(SHAPES)
    + list(PLURALS.values())
    + ["and", ",", "a", "picture", "of"]
)


# ---------------------------------------------------------------- shapes


def caption_for(objects: list[tuple[str, str]]) -> str:
    """'2 red circles , 1 blue square and 1 green ring': groups in order of first appearance."""
    groups: dict[tuple[str, str], int] = {}
    for colour, shape in objects:
        groups[(colour, shape)] = groups.get((colour, shape), 0) + 1
    parts = [f"{n} {colour} {PLURALS[shape] if n > 1 else shape}" for (colour, shape), n in groups.items()]
    return parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]


def make_shapes_sample(
    index: int,
    seed: int = 0,
    split: str = "test",
    image_size: int = SHAPES_SIZE,
    single_category: bool = False,
) -> Sample:
    """Draw sample `index` of the `shapes` stream (split, seed)."""
    if split not in SPLITS:
        raise DatasetError(f"unknown shapes split {split!r}; use one of {list(SPLITS)}")
    rng = np.random.default_rng([SPLITS[split], seed, index, int(single_category)])
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    cell = image_size / GRID
    cells = rng.choice(GRID * GRID, size=count, replace=False)
    category = SHAPES[int(rng.integers(len(SHAPES)))] if single_category else None
    objects, placed = [], []
    for c in sorted(cells.tolist()):
        shape = category or SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        size = cell * rng.uniform(0.55, 0.9)
        x0 = (c % GRID) * cell + rng.uniform(0, cell - size)
        y0 = (c // GRID) * cell + rng.uniform(0, cell - size)
        draw_shape(draw, shape, (x0, y0, x0 + size, y0 + size), COLOURS[colour], background)
        objects.append((colour, shape))
        placed.append((int(c), colour, shape))
    return Sample(
        image=image,
        answer=str(count),
        caption=caption_for(objects),
        category=category,
        id=f"shapes-{split}-{seed}-{'single-' if single_category else ''}{index}",
        objects=placed,
    )


def shapes_samples(
    n_samples: int,
    seed: int = 0,
    split: str = "test",
    image_size: int = SHAPES_SIZE,
    single_category: bool = False,
) -> list[Sample]:
    return [make_shapes_sample(i, seed, split, image_size, single_category) for i in range(n_samples)]


# ---------------------------------------------------------------- imagefolder


@dataclass
class FolderReport:
    """What an imagefolder load used and skipped: `skipped` lists (file name, reason)."""

    folder: Path
    listed: int = 0
    used: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.folder}: {self.used} of {self.listed} listed images used"
        if self.skipped:
            names = ", ".join(name for name, _ in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f"; {len(self.skipped)} skipped: {names}{more}"
        return text


last_folder_report: FolderReport | None = None  # the latest imagefolder load's report, for the chapters


def _check_metadata(folder: Path) -> int:
    """Our checks on metadata.jsonl before `datasets` reads it: line-numbered messages that name the fix.
    Returns the number of listed images. Reads line by line: a large folder's metadata is streamed."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise DatasetError(
            f"{folder} has no metadata.jsonl: an imagefolder dataset needs one line per image "
            'like {"file_name": "a.png", "caption": "...", "answer": "3", "category": "dog"}'
        )
    listed, kinds = 0, {}  # column -> (JSON type name, first line): pyarrow refuses a column of mixed types
    with open(meta, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    f"{meta}:{lineno} is not UTF-8 text (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1}); save metadata.jsonl as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"{meta}:{lineno} is not valid JSON ({e.msg}); fix or remove that line"
                ) from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise DatasetError(f"{meta}:{lineno} has no 'file_name'; each line must name its image")
            if not (folder / str(row["file_name"])).is_file():
                raise DatasetError(f"{meta}:{lineno} names {row['file_name']!r}, which is not in {folder}")
            for key, value in row.items():
                if value is None:
                    continue
                kind = type(value).__name__
                seen = kinds.setdefault(key, (kind, lineno))
                if seen[0] != kind and {seen[0], kind} != {"int", "float"}:
                    raise DatasetError(
                        f"{meta}:{lineno}: {key!r} is a {kind} here but a {seen[0]} on line "
                        f'{seen[1]}; write every {key!r} the same way (e.g. all as strings: "4")'
                    )
            listed += 1
    if not listed:
        raise DatasetError(f"{meta} lists no images: add at least one line")
    return listed


def decode_image(entry: dict) -> Image.Image:
    """One image, decoded now (the dataset hands us paths). Raises ValueError with a short reason."""
    source = io.BytesIO(entry["bytes"]) if entry.get("bytes") else entry["path"]
    try:
        with Image.open(source) as im:
            return im.convert("RGB")
    except Image.DecompressionBombError:
        raise ValueError(
            f"larger than PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels (its guard against "
            "decompression bombs); shrink the image"
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"not a readable image ({e}); replace it or drop its metadata line") from None


def imagefolder_samples(
    folder: str | os.PathLike,
    n_samples: int | None = None,
    question: str | None = None,
    seed: int = 0,
    single_category: bool = False,
    image_size: int | None = None,
) -> list[Sample]:
    """Images + metadata.jsonl (`file_name`, `caption`, optional `question`, `answer`, `category`), read
    with the `datasets` library's `imagefolder` loader, streamed and without decoding: only the images used
    are decoded. Fewer asked for than listed: a seeded choice. A broken image is skipped, counted and named
    (see `last_folder_report`); the load fails only when fewer than min(n_samples, listed) are readable.
    A relative folder is taken from the current directory; messages name the absolute path.

    The prompt asks a row's own `question`; `question` given asks that instead (a row's answer to another
    question of its own is then dropped, `with_question`); a row without one asks `question`, else the
    counting question, and its `answer` answers what it asks. `image_size`: each image resized so that its
    longer side has that many pixels (`fit_image`; None: as it is on disk)."""
    global last_folder_report
    image_size = check_image_size(image_size)
    if question is not None:
        question = check_question(question)
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    _check_metadata(folder)
    rows = _stream_rows(folder)
    if single_category:
        rows = [r for r in rows if r.get("category")]
        if not rows:
            raise DatasetError(f"{folder}: no line of metadata.jsonl has a 'category'; probing needs them")
    wanted = len(rows) if n_samples is None else min(n_samples, len(rows))
    order = list(range(len(rows)))
    if wanted < len(rows):  # a seeded choice; the chosen images keep the folder's order
        order = np.random.default_rng(seed).permutation(len(rows)).tolist()
    report = FolderReport(folder, listed=len(rows))
    chosen: list[tuple[int, Sample]] = []
    for index in order:
        if len(chosen) == wanted:
            break
        row = rows[index]
        name = _listed_name(row["image"]["path"], folder) if row["image"].get("path") else f"row {index}"
        try:
            image = decode_image(row["image"])
        except ValueError as e:
            report.skipped.append((name, str(e)))
            continue
        answer = row.get("answer")
        own = row.get("question")
        sample = Sample(
            image=fit_image(image, image_size),
            question=str(own).strip() if own not in (None, "") else (question or QUESTION),
            answer=None if answer in (None, "") else str(answer).strip(),
            caption=row.get("caption"),
            category=row.get("category"),
            id=name,
        )
        chosen.append((index, with_question([sample], question)[0]))
    report.used = len(chosen)
    last_folder_report = report
    if len(chosen) < wanted:
        name, why = report.skipped[0]
        raise DatasetError(f"{folder / name} is {why}. {report.summary()}, where {wanted} were asked for")
    if report.skipped:
        warnings.warn(report.summary(), stacklevel=2)
    return [sample for _, sample in sorted(chosen, key=lambda pair: pair[0])]


def _listed_name(path: str, folder: Path) -> str:
    """An image's name inside its dataset folder, as metadata.jsonl lists it. The loader hands back
    resolved paths, so a folder reached through a symlink is compared by its resolved path too."""
    for base in (folder, folder.resolve()):
        name = os.path.relpath(path, base)
        if not name.startswith(os.pardir + os.sep):
            return name
    return os.path.basename(path)


def _stream_rows(folder: Path) -> list[dict]:
    """Every listed image's metadata, with its path, from `datasets`' imagefolder loader (streamed, no image
    decoded). Offline, and nothing is written into the user's folder (the loader's lock and module files go to
    the datasets cache, by default ~/.cache/huggingface/datasets)."""
    import datasets

    try:
        stream = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", streaming=True)
        stream = stream.cast_column("image", datasets.Image(decode=False))
        return list(stream)
    except Exception as e:  # the loader's own errors say little about the folder: name it
        raise DatasetError(
            f"the datasets imagefolder loader could not read {folder}: {type(e).__name__}: {e}"
        ) from None


# ---------------------------------------------------------------- entry point


def load_samples(
    dataset: str,
    n_samples: int,
    seed: int = 0,
    single_category: bool = False,
    image_size: int | None = None,
    question: str | None = None,
) -> list[Sample]:
    """`dataset` is 'shapes', 'scenes', 'pixelprose', or a local imagefolder path (relative: from the
    current directory).

    `image_size`: the side in pixels of the images, what the model should see (a chapter passes the size
    its model expects, `LoadedModel.native_image_size`): the synthetic sets are drawn at that size,
    photographs (PixelProse, a folder) resized so that their longer side has it. None: `shapes` at 64
    pixels, `scenes` at 128 (what the organisms were trained on), photographs as they are.
    `question`: what every prompt asks instead of the dataset's own question (`with_question`: an answer
    to another question is dropped); None: the dataset's own (a folder's `question` column, else the
    counting question)."""
    if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples < 1:
        raise DatasetError(f"n_samples must be at least 1, got {n_samples}")
    try:
        n_samples = as_int(n_samples, "n_samples", minimum=1)
        seed = as_int(seed, "seed", minimum=0)
    except ParameterError as e:
        raise DatasetError(str(e)) from None
    image_size = check_image_size(image_size)  # a ParameterError naming the parameter
    if question is not None:
        question = check_question(question)
    dataset = str(dataset)
    if dataset == "shapes":
        samples = shapes_samples(n_samples, seed, "test", image_size or SHAPES_SIZE, single_category)
    elif dataset == "scenes":  # the deep organisms' set (vlmlib.data.scenes)
        samples = scenes_samples(
            n_samples, seed, "test", image_size or SCENE_SIZE, single_category=single_category
        )
    elif dataset == "pixelprose":
        # shards: PIXELPROSE_SHARDS (file, folder, glob) or the hub; see vlmlib.data.pixelprose
        samples = pixelprose_samples(n_samples, seed, single_category, image_size=image_size)
    elif Path(dataset).expanduser().is_dir():
        return imagefolder_samples(
            dataset,
            n_samples,
            question=question,
            seed=seed,
            single_category=single_category,
            image_size=image_size,
        )
    else:
        raise DatasetError(
            f"unknown dataset {dataset!r}: use 'shapes', 'scenes', 'pixelprose', or the path of a local "
            f"folder with images and metadata.jsonl (no folder {os.path.abspath(dataset)})"
        )
    return with_question(samples, question)
