"""Textual hints about the count, for any dataset whose answers are counts 1 to 9.

A hint is a caption-like claim placed before the question ("There are 4 objects . How many objects
are in the image?"). The same image is asked three ways (`hint_variants`): with no hint, with a
hint that agrees with the answer, and with one that conflicts with it. Whether a model answers what
the text claims or what the image shows is the test of a language prior overriding visual evidence.

    variants = hint_variants(sample)               # {'absent', 'agree', 'conflict'}
    variants["conflict"].hint_count                # the false count the hint claims
    disagreement(variants["conflict"])             # |hint - answer|: 0 for agree and absent

`scenes` samples get their hints from `vlmlib.data.scenes` (the conflicting count the training
recipe's evaluation uses); any other sample whose answer is a count 1-9 (`shapes`, a folder with
numeric answers) becomes a `HintedSample`, its conflicting count drawn from its id, so it is the
same in every run. Anything else is a `DatasetError` that says why.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields, replace

import numpy as np

from .samples import DatasetError, Sample
from .scenes import SCENE_MAX_OBJECTS, SceneSample, hint_text
from .scenes import conflicting_count as scene_conflicting_count
from .scenes import with_hint as scene_with_hint

HINT_KINDS = ("absent", "agree", "conflict")
MAX_HINT_COUNT = SCENE_MAX_OBJECTS  # hints claim 1..9 objects


@dataclass
class HintedSample(Sample):
    """A `Sample` of any dataset with a hint before its question (the fields of `SceneSample`'s hint)."""

    hint: str | None = None  # the claim placed before the question, e.g. "There are 4 objects ."
    hint_count: int | None = None  # the count the hint claims
    hint_kind: str = "absent"  # absent | agree | conflict


def answer_count(sample, max_count: int = MAX_HINT_COUNT) -> int:
    """The sample's answer as a count 1..max_count, or a DatasetError naming the sample."""
    answer = getattr(sample, "answer", None)
    try:
        count = int(str(answer).strip())
    except ValueError:
        count = None
    if count is None or not 1 <= count <= max_count or str(count) != str(answer).strip():
        raise DatasetError(
            f"hints need answers that are counts 1-{max_count}; sample {getattr(sample, 'id', '') or '?'} "
            f"has answer {answer!r} (use a counting dataset: scenes, shapes, or a folder whose answers "
            "are counts)"
        )
    return count


def unhinted_question(sample) -> str:
    """The sample's question without its hint (the question itself where it has none)."""
    hint = getattr(sample, "hint", None)
    if not hint:
        return sample.question
    at = sample.question.find(hint)
    if at < 0:
        raise DatasetError(
            f"sample {sample.id}: its hint {hint!r} is not in its question {sample.question!r}"
        )
    return " ".join((sample.question[:at] + sample.question[at + len(hint) :]).split())


def with_hint(sample, n: int | None, max_count: int = MAX_HINT_COUNT):
    """The sample with a hint claiming `n` objects before its question (None: no hint)."""
    answer_count(sample, max_count)
    if n is not None and not 1 <= n <= max_count:
        raise DatasetError(f"a hint claims 1 to {max_count} objects, not {n}")
    question = unhinted_question(sample)
    if isinstance(sample, SceneSample):  # its hint fields, then the question it was asked (perhaps another)
        hinted = scene_with_hint(sample, n)
        return replace(hinted, question=question if n is None else f"{hinted.hint} {question}")
    if not isinstance(sample, HintedSample):
        sample = HintedSample(**{f.name: getattr(sample, f.name) for f in fields(Sample)})
    if n is None:
        return replace(sample, question=question, hint=None, hint_count=None, hint_kind="absent")
    hint = hint_text(n)
    kind = "agree" if str(n) == str(sample.answer).strip() else "conflict"
    return replace(sample, question=f"{hint} {question}", hint=hint, hint_count=n, hint_kind=kind)


def conflicting_count(sample, max_count: int = MAX_HINT_COUNT) -> int:
    """A count other than the answer, uniform over the others and the same for a sample every time."""
    true = answer_count(sample, max_count)
    if isinstance(sample, SceneSample) and sample.scene is not None and max_count == SCENE_MAX_OBJECTS:
        return scene_conflicting_count(sample)
    rng = np.random.default_rng([zlib.crc32(str(sample.id).encode()), 7])
    others = [n for n in range(1, max_count + 1) if n != true]
    return others[int(rng.integers(len(others)))]


def hint_variants(sample, max_count: int = MAX_HINT_COUNT) -> dict:
    """{'absent', 'agree', 'conflict'}: the same image with no hint, a true hint and a false one."""
    true = answer_count(sample, max_count)
    return {
        "absent": with_hint(sample, None, max_count),
        "agree": with_hint(sample, true, max_count),
        "conflict": with_hint(sample, conflicting_count(sample, max_count), max_count),
    }


def disagreement(sample) -> int:
    """|claimed - true| count of a hinted sample; 0 without a hint."""
    n = getattr(sample, "hint_count", None)
    return 0 if n is None else abs(int(n) - answer_count(sample))


__all__ = [
    "HINT_KINDS",
    "HintedSample",
    "MAX_HINT_COUNT",
    "answer_count",
    "conflicting_count",
    "disagreement",
    "hint_variants",
    "unhinted_question",
    "with_hint",
]
