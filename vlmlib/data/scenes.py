"""`scenes`: the harder synthetic set of the deep organisms (issue 24).

A scene is 1 to 9 objects (the `shapes` shapes and colours) at arbitrary positions and sizes on a
128-pixel canvas, with no grid: objects may overlap (a later one partly hides an earlier one, each
stays mostly visible), over a noisy background crossed by thin grey strokes (clutter that is not an
object). The question is the `shapes` counting question; its answer is one token, `1` to `9`.

Everything follows from (split, seed, index), as for `shapes`: a scene is first drawn as a
`SceneSpec` (background, clutter, objects) from `default_rng([split, seed, index, 100])`, then
rendered. The spec is kept on the sample, so the data layer can also give

- `scene_partner(sample)`: the counterfactual partner, the same scene with one object removed or
  added (everything else, noise and clutter included, identical): clean/corrupted pairs whose
  answers differ by one;
- `with_hint(sample, n)` / `hint_variants(sample)`: the sample with a caption-like claim about the
  count before the question ("There are 4 objects . How many objects are in the image?"), agreeing,
  conflicting or absent. The hint is part of `sample.question` (so every family's prompt carries it
  unchanged); `sample.hint`, `sample.hint_count` and `sample.hint_kind` say what it is;
- `scene_document(...)`: text only, the synthetic language the language model is pre-trained on:
  a scene description in words ("two red circles , a blue square ."), perhaps a hint, the question,
  the answer; the count can be read from the text.

Training samples carry hints at a rate (`hint_rate`) and are truthful with probability
`hint_truth` (like web captions: mostly right); test samples carry none unless asked for.
`SceneSample.objects` holds (cell, colour, shape) like `shapes`, the cell being the 16-pixel cell of
the object's centre on the 8x8 grid of a 128-pixel image (a PaliGemma token, a Qwen2-VL merged token),
row-major; objects span several cells and are not aligned to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from .palette import BACKGROUNDS, CAPTION_PROMPT, COLOURS, PLURALS, SHAPES, draw_shape
from .samples import QUESTION, DatasetError, Sample

SCENE_SIZE = 128  # pixels per side of a rendered scene
SCENE_MAX_OBJECTS = 9
SCENE_CELL = 16  # pixels per side of a cell (a vision token of the deep organisms)
SCENE_SALT = 100  # keeps the scenes' random streams apart from the shapes' ones
SCENE_SPLITS = {"train": 1, "test": 2}
# object diameter, in pixels of a 128-pixel scene (independent of the count)
SIZE_RANGE = (14.0, 34.0)
# minimum centre distance, as a share of the two radii summed: below 1 objects overlap (occlusion)
OVERLAP = 0.75
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HINT_KINDS = ("absent", "agree", "conflict")


def _shapes_tables():  # the shapes and colours of `shapes`
    return SHAPES, COLOURS, PLURALS, BACKGROUNDS


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    cx: float  # centre, in pixels of a 128-pixel scene
    cy: float
    size: float  # diameter, in pixels of a 128-pixel scene


@dataclass(frozen=True)
class SceneSpec:
    """Everything a scene's pixels follow from (coordinates for a 128-pixel canvas)."""

    split: str
    seed: int
    index: int
    background: tuple[int, int, int]
    noise_seed: int
    clutter: tuple[tuple[float, float, float, float, int, int], ...]  # (x0, y0, x1, y1, width, grey shift)
    objects: tuple[SceneObject, ...]
    variant: str = ""  # "" for the drawn scene, "minus"/"plus" for a counterfactual partner
    category: str | None = None  # the one shape of a single-category scene

    @property
    def count(self) -> int:
        return len(self.objects)


@dataclass
class SceneSample(Sample):
    """A `Sample` of `scenes`, with its spec and its hint (if any)."""

    hint: str | None = None  # the textual claim placed before the question, e.g. "There are 4 objects ."
    hint_count: int | None = None  # the count the hint claims
    hint_kind: str = "absent"  # absent | agree | conflict
    scene: SceneSpec | None = field(default=None, repr=False)


# ---------------------------------------------------------------- drawing a spec


def _fits(obj: tuple[float, float, float], placed: list[SceneObject], colour: str) -> bool:
    cx, cy, size = obj
    for o in placed:
        d = float(np.hypot(cx - o.cx, cy - o.cy))
        # same colour: never touching, corners included (two would merge into one blob);
        # else a bounded overlap
        same = o.colour == colour
        limit = (size + o.size) / 2 * (1.42 if same else OVERLAP) + (2 if same else 0)
        if d < limit:
            return False
    return True


def _place(rng: np.random.Generator, placed: list[SceneObject], category: str | None = None) -> SceneObject:
    shapes, colours, _, _ = _shapes_tables()
    shape = shapes[int(rng.integers(len(shapes)))]
    shape = category or shape
    colour = list(colours)[int(rng.integers(len(colours)))]
    size = float(rng.uniform(*SIZE_RANGE))
    for attempt in range(400):
        if attempt and attempt % 80 == 0:
            size *= 0.85  # a crowded scene: smaller objects fit
        r = size / 2 + 1
        cx, cy = float(rng.uniform(r, SCENE_SIZE - r)), float(rng.uniform(r, SCENE_SIZE - r))
        if _fits((cx, cy, size), placed, colour):
            return SceneObject(shape, colour, round(cx, 2), round(cy, 2), round(size, 2))
    raise RuntimeError("no room for another object")  # not reached for 9 objects at these sizes


def scene_spec(
    index: int, seed: int = 0, split: str = "test", count: int | None = None, single_category: bool = False
) -> SceneSpec:
    """The spec of sample `index` of the scenes stream (split, seed); `count` forces the count;
    `single_category`: a stream of its own whose scenes hold one shape only (for probing)."""
    if split not in SCENE_SPLITS:
        raise DatasetError(f"unknown scenes split {split!r}; use one of {list(SCENE_SPLITS)}")
    _, _, _, backgrounds = _shapes_tables()
    rng = np.random.default_rng([SCENE_SPLITS[split], seed, index, SCENE_SALT + 10 * single_category])
    n = int(rng.integers(1, SCENE_MAX_OBJECTS + 1))
    shapes = _shapes_tables()[0]
    category = shapes[int(rng.integers(len(shapes)))] if single_category else None
    n = n if count is None else count
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    noise_seed = int(rng.integers(2**31))
    clutter = []
    for _ in range(int(rng.integers(0, 5))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, SCENE_SIZE, size=4))
        clutter.append(
            (
                round(x0, 1),
                round(y0, 1),
                round(x1, 1),
                round(y1, 1),
                int(rng.integers(1, 3)),
                int(rng.choice([-45, 45])),
            )
        )
    placed: list[SceneObject] = []
    for _ in range(n):
        placed.append(_place(rng, placed, category))
    return SceneSpec(
        split, seed, index, background, noise_seed, tuple(clutter), tuple(placed), category=category
    )


def render_scene(spec: SceneSpec, image_size: int = SCENE_SIZE) -> tuple[Image.Image, np.ndarray]:
    """(image, index map): the map holds, per pixel, 1 + the index of the topmost object there (0: none)."""
    k = image_size / SCENE_SIZE
    base = np.full((image_size, image_size, 3), spec.background, dtype=np.float32)
    noise = np.random.default_rng(spec.noise_seed).normal(0, 6, size=(image_size, image_size, 1))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1, width, shift in spec.clutter:
        grey = tuple(int(np.clip(c + shift, 0, 255)) for c in spec.background)
        draw.line((x0 * k, y0 * k, x1 * k, y1 * k), fill=grey, width=max(1, round(width * k)))
    labels = np.zeros((image_size, image_size), dtype=np.uint8)
    for i, o in enumerate(spec.objects):
        r = o.size * k / 2
        box = (o.cx * k - r, o.cy * k - r, o.cx * k + r, o.cy * k + r)
        # each object through its own mask: a ring's hole shows what lies behind it
        mask = Image.new("L", (image_size, image_size), 0)
        draw_shape(ImageDraw.Draw(mask), o.shape, box, 255, 0)
        image.paste(COLOURS[o.colour], mask=mask)
        labels[np.asarray(mask) > 0] = i + 1
    return image, labels


# ---------------------------------------------------------------- words


def describe(objects) -> str:
    """'two red circles , a blue square and an orange ring': groups of (colour, shape) in reading
    order of their first object (rows of 16 pixels, then left to right)."""
    _, _, plurals, _ = _shapes_tables()
    ordered = sorted(objects, key=lambda o: (int(o.cy // SCENE_CELL), o.cx))
    groups: dict[tuple[str, str], int] = {}
    for o in ordered:
        groups[(o.colour, o.shape)] = groups.get((o.colour, o.shape), 0) + 1
    parts = []
    for (colour, shape), n in groups.items():
        if n == 1:
            parts.append(f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}")
        else:
            parts.append(f"{NUMBER_WORDS[n - 1]} {colour} {plurals[shape]}")
    if not parts:  # a scene emptied of its objects (a blank-image control)
        return "no object"
    return parts[0] if len(parts) == 1 else " , ".join(parts[:-1]) + " and " + parts[-1]


def hint_text(n: int) -> str:
    return "There is 1 object ." if n == 1 else f"There are {n} objects ."


def scenes_vocabulary() -> list[str]:
    """Every word the scenes data can produce (the deep organisms' word-level vocabulary)."""
    shapes, colours, plurals, _ = _shapes_tables()
    words = (
        QUESTION.split()
        + CAPTION_PROMPT.split()
        + [str(n) for n in range(1, SCENE_MAX_OBJECTS + 1)]
        + list(NUMBER_WORDS)
        + list(colours)
        + list(shapes)
        + list(plurals.values())
        + ["and", ",", "a", "an", "There", "is", "are", "object", "objects", "."]
    )
    return list(dict.fromkeys(words))


# ---------------------------------------------------------------- samples


def _cells(spec: SceneSpec) -> list[tuple[int, str, str]]:
    grid = SCENE_SIZE // SCENE_CELL
    return [
        (int(o.cy // SCENE_CELL) * grid + int(o.cx // SCENE_CELL), o.colour, o.shape) for o in spec.objects
    ]


def sample_of(spec: SceneSpec, image_size: int = SCENE_SIZE) -> SceneSample:
    image, _ = render_scene(spec, image_size)
    variant = f"-{spec.variant}" if spec.variant else ""
    single = "single-" if spec.category else ""
    return SceneSample(
        image=image,
        answer=str(spec.count),
        caption=describe(spec.objects),
        category=spec.category,
        id=f"scenes-{spec.split}-{spec.seed}-{single}{spec.index}{variant}",
        objects=_cells(spec),
        scene=spec,
    )


def with_hint(sample: SceneSample, n: int | None) -> SceneSample:
    """The sample with a hint claiming `n` objects before the question (None: no hint)."""
    if n is None:
        return replace(sample, question=QUESTION, hint=None, hint_count=None, hint_kind="absent")
    if not 1 <= n <= SCENE_MAX_OBJECTS:
        raise DatasetError(f"a hint claims 1 to {SCENE_MAX_OBJECTS} objects, not {n}")
    hint = hint_text(n)
    kind = "agree" if str(n) == sample.answer else "conflict"
    return replace(sample, question=f"{hint} {QUESTION}", hint=hint, hint_count=n, hint_kind=kind)


def conflicting_count(sample: SceneSample) -> int:
    """A count other than the true one, the same for a sample every time (uniform over the others)."""
    spec = sample.scene
    rng = np.random.default_rng([SCENE_SPLITS[spec.split], spec.seed, spec.index, SCENE_SALT + 2])
    others = [n for n in range(1, SCENE_MAX_OBJECTS + 1) if n != int(sample.answer)]
    return others[int(rng.integers(len(others)))]


def hint_variants(sample: SceneSample) -> dict[str, SceneSample]:
    """{'absent', 'agree', 'conflict'}: the same image under no hint, a true hint and a false one."""
    return {
        "absent": with_hint(sample, None),
        "agree": with_hint(sample, int(sample.answer)),
        "conflict": with_hint(sample, conflicting_count(sample)),
    }


def make_scene_sample(
    index: int,
    seed: int = 0,
    split: str = "test",
    image_size: int = SCENE_SIZE,
    hint_rate: float = 0.0,
    hint_truth: float = 0.85,
    single_category: bool = False,
) -> SceneSample:
    """Sample `index` of the scenes stream (split, seed); with probability `hint_rate` it carries a
    hint, truthful with probability `hint_truth` (else uniform over the wrong counts). The image does
    not depend on the hint parameters."""
    sample = sample_of(scene_spec(index, seed, split, single_category=single_category), image_size)
    rng = np.random.default_rng([SCENE_SPLITS[split], seed, index, SCENE_SALT + 1])
    if rng.random() >= hint_rate:
        return sample
    if rng.random() < hint_truth:
        return with_hint(sample, int(sample.answer))
    others = [n for n in range(1, SCENE_MAX_OBJECTS + 1) if n != int(sample.answer)]
    return with_hint(sample, others[int(rng.integers(len(others)))])


def scenes_samples(
    n_samples: int, seed: int = 0, split: str = "test", image_size: int = SCENE_SIZE, **hints
) -> list[SceneSample]:
    return [make_scene_sample(i, seed, split, image_size, **hints) for i in range(n_samples)]


def scene_partner(sample: SceneSample, change: str = "auto", image_size: int | None = None) -> SceneSample:
    """The counterfactual partner: the same scene with one object removed ('remove') or added ('add');
    'auto' picks one (add to a single object, remove from nine, else a fair coin, the same every time).
    Background, noise, clutter and every other object are unchanged; the hint, if any, is kept."""
    spec = sample.scene
    if spec is None:
        raise DatasetError("scene_partner needs a `scenes` sample (one with its scene spec)")
    rng = np.random.default_rng([SCENE_SPLITS[spec.split], spec.seed, spec.index, SCENE_SALT + 3])
    coin = rng.random() < 0.5
    if change == "auto":
        change = "add" if spec.count == 1 or (coin and spec.count < SCENE_MAX_OBJECTS) else "remove"
    if change == "remove":
        if spec.count < 2:
            raise DatasetError("cannot remove the only object of a scene")
        drop = int(rng.integers(spec.count))
        objects = spec.objects[:drop] + spec.objects[drop + 1 :]
        new = replace(spec, objects=objects, variant="minus")
    elif change == "add":
        if spec.count >= SCENE_MAX_OBJECTS:
            raise DatasetError(f"a scene holds at most {SCENE_MAX_OBJECTS} objects")
        added = _place(rng, list(spec.objects), spec.category)
        new = replace(spec, objects=spec.objects + (added,), variant="plus")
    else:
        raise DatasetError(f"change must be 'add', 'remove' or 'auto', not {change!r}")
    size = image_size or sample.image.size[0]
    partner = sample_of(new, size)
    return with_hint(partner, sample.hint_count) if sample.hint_count else partner


def cell_targets(spec: SceneSpec, grid: int = SCENE_SIZE // SCENE_CELL, cover: float = 0.2) -> dict:
    """Per-cell targets on a grid x grid partition (row-major), for a vision tower's own objective:
    `object` the index + 1 of the topmost object covering at least `cover` of the cell (0: none),
    `centres` how many object centres lie in the cell, `visible` (cells, objects) each object's visible
    pixels in the cell."""
    _, index_map = render_scene(spec, SCENE_SIZE)
    step = SCENE_SIZE // grid
    cells = index_map.reshape(grid, step, grid, step).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    objects = np.zeros(grid * grid, dtype=np.int64)
    visible = np.zeros((grid * grid, spec.count), dtype=np.int64)
    for c, pixels in enumerate(cells):
        counts = np.bincount(pixels, minlength=spec.count + 1)
        visible[c] = counts[1:]
        counts[0] = 0
        if counts.max() >= cover * pixels.size:
            objects[c] = int(counts.argmax())
    centres = np.zeros(grid * grid, dtype=np.int64)
    for o in spec.objects:
        centres[int(o.cy // step) * grid + int(o.cx // step)] += 1
    return {"object": objects, "centres": centres, "visible": visible}


# ---------------------------------------------------------------- the text language


def scene_document(
    index: int, seed: int = 0, split: str = "train", hint_truth: float = 0.85
) -> tuple[str, str, str]:
    """(context, question, answer) of text document `index`: a scene described in words and/or a
    hint, then the counting question and its answer. Forms, drawn per document: description only
    (40%), description and hint (30%; the answer is the description's count, the hint truthful with
    probability `hint_truth`), hint only (15%; the answer the scene's count), description only without
    question (15%: the context is the whole document, question and answer empty)."""
    spec = scene_spec(index, seed, split)
    rng = np.random.default_rng([SCENE_SPLITS[split], seed, index, SCENE_SALT + 4])
    form = rng.random()
    answer = str(spec.count)
    others = [n for n in range(1, SCENE_MAX_OBJECTS + 1) if n != spec.count]
    claimed = spec.count if rng.random() < hint_truth else others[int(rng.integers(len(others)))]
    description = describe(spec.objects) + " ."
    if form < 0.40:
        return description, QUESTION, answer
    if form < 0.70:
        return f"{description} {hint_text(claimed)}", QUESTION, answer
    if form < 0.85:
        return hint_text(claimed), QUESTION, answer
    return description, "", ""
