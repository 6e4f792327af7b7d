"""The chapter specs: one module per chapter in this package, each defining `SPEC` (a `ChapterSpec`).

The registry imports every module of the package, so that a new chapter needs its notebook and its
spec module and nothing else; `register_chapter` adds a spec defined elsewhere (tests/toy_chapter.py).
"""

from __future__ import annotations

import importlib
import pkgutil

from ..claims import Claim
from ..spec import ChapterSpec

_EXTRA: dict[str, ChapterSpec] = {}


def _package_specs() -> dict[str, ChapterSpec]:
    found = {}
    for module in pkgutil.iter_modules(__path__):
        spec = getattr(importlib.import_module(f"{__name__}.{module.name}"), "SPEC", None)
        if isinstance(spec, ChapterSpec):
            found[spec.chapter] = spec
    return found


def register_chapter(spec: ChapterSpec) -> ChapterSpec:
    """Add a chapter spec defined outside this package (a spec of the same chapter is replaced)."""
    _EXTRA[spec.chapter] = spec
    return spec


def unregister_chapter(chapter: str) -> None:
    _EXTRA.pop(chapter, None)


def chapter_specs() -> dict[str, ChapterSpec]:
    """Every spec by chapter, in chapter order."""
    specs = {**_package_specs(), **_EXTRA}
    return {name: specs[name] for name in sorted(specs)}


def chapter_spec(chapter: str) -> ChapterSpec:
    """The spec of a chapter (by its notebook's stem); a chapter without one gets an empty spec."""
    return chapter_specs().get(chapter) or ChapterSpec(chapter)


def all_claims() -> list[Claim]:
    """Every claim of the paper the book tests, in chapter order."""
    return [claim for spec in chapter_specs().values() for claim in spec.claims]


def shared_readings() -> tuple[str, ...]:
    """The union of what the observation chapters read: one shared pass computes them all."""
    return tuple(dict.fromkeys(r for spec in chapter_specs().values() for r in spec.readings))
