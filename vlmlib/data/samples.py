"""What every dataset yields: `Sample`s, and `DatasetError` when a dataset cannot be used."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

QUESTION = "How many objects are in the image?"


@dataclass
class Sample:
    """One image with what the chapters may ask of it."""

    image: Image.Image
    question: str = QUESTION
    answer: str | None = None  # one-token answer to the question, if known
    caption: str | None = None
    category: str | None = None  # a single object category, for probing
    id: str = ""
    # `shapes` only: (grid cell, colour, shape) of each object, cells counted row-major from 0
    objects: list[tuple[int, str, str]] | None = None


class DatasetError(ValueError):
    """A dataset that cannot be used, with what to do about it."""
