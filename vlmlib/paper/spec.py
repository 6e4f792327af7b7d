"""What a chapter is besides its notebook: one `ChapterSpec`, in one module of `vlmlib.paper.chapters`.

A spec names the chapter (its notebook's stem), the paper's claims its results answer (each with its
rule), the readings it takes from the shared observation pass, how its main measurement is drawn on
the side-by-side page, and how it prepares its run (derived parameters, its samples). A new chapter is
a notebook in notebooks/ plus a spec module; nothing else changes (the registry finds the module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .claims import Claim


@dataclass(frozen=True)
class SideBySide:
    """How one chapter's main measurement is drawn for every model on the side-by-side page."""

    kind: str  # "lines" (one curve per label over layers) or "bars" (one bar per row label)
    # results -> ({label: (mean array, s.e. array)} for lines, {label: (value, s.e.)} for bars, y label)
    extract: Callable[[dict], tuple[dict, str]]
    note: str  # the caption under the figure
    ylim: tuple[float, float] | None = None
    xlabel: str = "decoder layer (from 0)"
    reference: Callable[[dict], float | None] | None = None  # results -> a dotted reference line, or None


@dataclass(frozen=True)
class ChapterSpec:
    chapter: str  # the notebook's stem, "01_representations"
    claims: tuple[Claim, ...] = ()  # the paper's claims this chapter's results answer
    readings: tuple[str, ...] = ()  # what it reads from the shared observation pass (vlmlib.observation)
    side_by_side: SideBySide | None = None
    # run -> None: derived parameters (run.params), groups, paper tables (run.extra); runs before the header
    prepare: Callable | None = None
    # (dataset, n_samples, seed, image_size, question) -> samples, where the chapter needs other samples than
    # load_samples gives (`vlmlib.paper.run.chapter_samples`: a loader without image_size refuses one given)
    load_samples: Callable | None = None
    # What the conclusion says when the weights are random (what a reading of an untrained model shows)
    untrained_note: str = "The weights are random: these numbers show the method at work, not a finding."
