"""Findings: every claim's rule applied to the results of the chapter that answers it."""

from __future__ import annotations

from .chapters import all_claims, chapter_spec
from .claims import evaluate
from .spec import ChapterSpec


def chapter_findings(results: dict, spec: ChapterSpec | None = None) -> list[dict]:
    """The findings for the claims a chapter's results answer (its results file's "findings"); `spec`: the
    chapter's spec where it is not one of the book's (by default, the spec of results["chapter"])."""
    spec = spec or chapter_spec(results.get("chapter", ""))
    return [evaluate(c, results) for c in spec.claims]


def all_findings(results_by_chapter: dict[str, dict | None], family: str = "") -> list[dict]:
    """Every claim, in the paper's order, for one family's results {chapter: results or None}."""
    return [evaluate(c, results_by_chapter.get(c.chapter), family) for c in all_claims()]
