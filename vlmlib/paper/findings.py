"""Findings: every claim's rule applied to the results of the chapter that answers it."""

from __future__ import annotations

from .chapters import all_claims, chapter_spec
from .claims import evaluate


def chapter_findings(results: dict) -> list[dict]:
    """The findings for the claims a chapter's results answer (its results file's "findings")."""
    return [evaluate(c, results) for c in chapter_spec(results.get("chapter", "")).claims]


def all_findings(results_by_chapter: dict[str, dict | None], family: str = "") -> list[dict]:
    """Every claim, in the paper's order, for one family's results {chapter: results or None}."""
    return [evaluate(c, results_by_chapter.get(c.chapter), family) for c in all_claims()]
