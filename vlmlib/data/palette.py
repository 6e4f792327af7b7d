"""What the synthetic sets draw with and how they ask: shapes, colours, backgrounds, the captioning
prompt. Shared by `shapes` (vlmlib.data) and `scenes` (vlmlib.data.scenes); re-exported by vlmlib.data."""

from __future__ import annotations

from PIL import ImageDraw

CAPTION_PROMPT = "Describe the image."  # the captioning task's prompt; the answer is the caption

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
BACKGROUNDS = ((0, 0, 0), (235, 235, 235), (90, 90, 90), (20, 30, 60))


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], colour, background
):
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        w = max(1.5, r / 2.5)
        draw.rectangle((cx - w, y0, cx + w, y1), fill=colour)
        draw.rectangle((x0, cy - w, x1, cy + w), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, fill=colour)
        w = max(2.0, r / 2.2)
        draw.ellipse((x0 + w, y0 + w, x1 - w, y1 - w), fill=background)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
