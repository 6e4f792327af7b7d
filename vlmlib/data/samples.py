"""What every dataset yields: `Sample`s, and `DatasetError` when a dataset cannot be used.

A sample's `question` is what its prompt asks (the paper's counting question unless the dataset gives its
own: a `question` column in an imagefolder's metadata.jsonl, or the chapters' `question` parameter), and
its `answer` answers that question: text of any length, scored whole with the checkpoint's own tokenizer
(`vlmlib.interventions.patching.answer_tokens`). `with_question` asks another question; `fit_image`
resizes a photograph to the side a model expects."""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image

from ..params import ParameterError, as_int

QUESTION = "How many objects are in the image?"


@dataclass
class Sample:
    """One image with what the chapters may ask of it."""

    image: Image.Image
    question: str = QUESTION
    answer: str | None = None  # the answer to `question`, if known (any number of tokens)
    caption: str | None = None
    category: str | None = None  # a single object category, for probing
    id: str = ""
    # `shapes` only: (grid cell, colour, shape) of each object, cells counted row-major from 0
    objects: list[tuple[int, str, str]] | None = None


class DatasetError(ValueError):
    """A dataset that cannot be used, with what to do about it."""


# Sides (pixels) an image may be drawn or resized to: below 16 a 4x4 grid of shapes has no room, above
# 4096 a dynamic-resolution model (Qwen2-VL) would read tens of thousands of image tokens per image.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 4096


def check_image_size(image_size, name: str = "image_size") -> int | None:
    """`image_size` as an int (None stays None: the dataset's or model's own size), or a ParameterError
    that names the parameter and the range."""
    if image_size is None:
        return None
    value = as_int(image_size, name, minimum=MIN_IMAGE_SIZE)
    if value > MAX_IMAGE_SIZE:
        raise ParameterError(
            f"parameter {name!r} should be at most {MAX_IMAGE_SIZE} pixels, got {value}; images that large "
            "give a dynamic-resolution model tens of thousands of image tokens"
        )
    return value


def fit_image(image: Image.Image, side: int | None) -> Image.Image:
    """`image` resized (bicubic) so that its longer side is `side` pixels, its aspect ratio kept (None, or
    already that size: unchanged). A fixed-size processor (PaliGemma) then resizes to its square as it
    always does; a dynamic-resolution one (Qwen2-VL) reads about (side / patch)^2 / merge^2 tokens."""
    if side is None:
        return image
    width, height = image.size
    if max(width, height) == side:
        return image
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def with_question(samples: list, question: str | None) -> list:
    """The samples asking `question` instead of their own (None: unchanged). A sample whose own question
    differs loses its answer, which answered the other question (a count is no answer to "What colour is
    the shape?"): its chapters then score the model's own top-1 token. A list subclass (PixelProse's, with
    its report) keeps its type and attributes."""
    if question is None:
        return samples
    question = check_question(question)
    changed = [s if s.question == question else replace(s, question=question, answer=None) for s in samples]
    if type(samples) is list:
        return changed
    out = type(samples)(changed)
    out.__dict__.update(getattr(samples, "__dict__", {}))
    return out


def check_question(question, name: str = "question") -> str:
    """A question as text, or a ParameterError: it must be non-empty text."""
    if not isinstance(question, str) or not question.strip():
        raise ParameterError(
            f"parameter {name!r} should be non-empty text (the question the prompt asks), got {question!r}"
        )
    return question.strip()
