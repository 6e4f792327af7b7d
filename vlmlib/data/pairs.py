"""Counterfactual pairs: each sample with a partner image that differs from it in one object only.

Counterfactual patching (`vlmlib.interventions.counterfactual`) needs a clean and a corrupted run whose
inputs differ in the image only, and whose answers differ. For the synthetic sets the partner is the same
scene with one object taken away (or, from a one-object scene, one added in an empty place), so the count
differs by one and everything else, background and the other objects, stays pixel for pixel:

    pairs = counterfactual_pairs(samples)      # [(sample, partner), ...], partner.answer != sample.answer

`shapes`: objects sit one per grid cell and never cross its border, so the last object's cell is painted
with the background (or a new object drawn in the first empty cell: a circle of 0.7 cells, in the colour
the sample uses least). `scenes`: `vlmlib.data.scenes.scene_partner`. A folder of photographs has no
partner: the error says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from PIL import ImageDraw

from . import COLOURS, GRID, SHAPES, caption_for, draw_shape
from .samples import DatasetError, Sample

PARTNER_SUFFIX = "-partner"


def shapes_partner(sample: Sample) -> Sample:
    """The `shapes` sample with its last object removed (or, when it has one object, one added)."""
    if not sample.objects or not sample.id.startswith("shapes-"):
        raise DatasetError(f"sample {sample.id!r} is not a `shapes` sample (it lists no grid objects)")
    image = sample.image.copy()
    side = image.size[0]
    cell = side / GRID
    used = {c for c, _, _ in sample.objects}
    empty = [c for c in range(GRID * GRID) if c not in used]
    # every shapes image has empty cells (at most 6 objects in 16 cells): their corner is the background
    background = image.getpixel((int((empty[0] % GRID) * cell), int((empty[0] // GRID) * cell)))
    draw = ImageDraw.Draw(image)
    if len(sample.objects) > 1:
        c = sample.objects[-1][0]
        x0, y0 = (c % GRID) * cell, (c // GRID) * cell
        draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=background)
        objects = sample.objects[:-1]
    else:
        c = empty[0]
        ((_, colour_used, _),) = sample.objects
        colour = next(name for name in COLOURS if name != colour_used)
        shape = sample.category or SHAPES[0]
        margin = 0.15 * cell
        x0, y0 = (c % GRID) * cell + margin, (c // GRID) * cell + margin
        draw_shape(draw, shape, (x0, y0, x0 + 0.7 * cell, y0 + 0.7 * cell), COLOURS[colour], background)
        objects = sorted([*sample.objects, (c, colour, shape)])
    return replace(
        sample,
        image=image,
        answer=str(len(objects)),
        caption=caption_for([(colour, shape) for _, colour, shape in objects]),
        id=sample.id + PARTNER_SUFFIX,
        objects=objects,
    )


def partner(sample: Sample) -> Sample:
    """The counterfactual partner of a synthetic sample (`shapes` or `scenes`)."""
    if getattr(sample, "scene", None) is not None:
        from .scenes import scene_partner

        return scene_partner(sample)
    if sample.id.startswith("shapes-") and sample.objects:
        return shapes_partner(sample)
    raise DatasetError(
        f"sample {sample.id!r} has no counterfactual partner: counterfactual patching needs pairs of images "
        "that differ in one object, which only the synthetic datasets (`shapes`, `scenes`) can draw; use one "
        "of them, or give the pairs yourself"
    )


def counterfactual_pairs(samples: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """(sample, partner) for every sample: the partner's count differs by one, nothing else in the image."""
    return [(s, partner(s)) for s in samples]
