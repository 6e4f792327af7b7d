"""Findings first (issue 26): a chapter's conclusion in at most five sentences of prose, the landing page's
findings generated from the verdicts (and saying so plainly when nothing ran), the first exercise's check."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from vlmlib.book import pages
from vlmlib.paper import exercises
from vlmlib.paper.page import conclusion_markdown

FINDING = {
    "claim_id": "similarity-drop",
    "claim": "Similarity drops in the last layers.",
    "section": "2.1",
    "chapter": "01_representations",
    "verdict": "holds",
    "reason": "late layers lower by 0.02 (more than two standard errors)",
}


def sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?:\s|$)", text))


def test_the_conclusion_is_at_most_five_sentences_then_the_verdicts():
    points = [f"Point {i} is 0.{i} ± 0.01 units." for i in range(8)]
    text = conclusion_markdown(points, [FINDING])
    prose = text.split("\n\n")[0]
    assert "\n" not in prose and sentences(prose) <= 5 and "1 holds" in prose
    assert "| the paper says | here | why |" in text and "**holds**" in text
    assert "More numbers from this run" in text and "- Point 7" in text  # the rest behind a toggle
    assert "Point 4" not in prose


def test_the_landing_findings_degrade_when_nothing_ran(tmp_path: Path):
    text = pages.findings_fragment(tmp_path, {}, {})
    assert text.startswith("## What this book found") and "No chapter has run yet" in text


def test_the_landing_findings_follow_the_verdicts(tmp_path: Path):
    results = {
        "paligemma": {"01_representations": {"model": "m", "trained": True, "description": "organism"}}
    }
    holds = {"paligemma": [dict(FINDING)]}
    fails = {"paligemma": [{**FINDING, "verdict": "does not hold"}]}
    said_holds = pages.findings_fragment(tmp_path, holds, results)
    said_fails = pages.findings_fragment(tmp_path, fails, results)
    assert "1 of the 1 claims tested holds (similarity drops in the last layers)" in said_holds
    assert "0 of the 1 claims tested hold and 1 does not (similarity drops in the last layers)" in said_fails


def test_the_exercise_check_runs_the_solution_while_the_stub_is_empty(monkeypatch):
    shown = []
    monkeypatch.setattr(exercises, "show_markdown", shown.append)

    def stub(lm, samples):
        raise NotImplementedError

    def solution(lm, samples):
        return np.arange(3.0)

    assert exercises.check(stub, solution, lambda: np.arange(3.0), None, [1, 2], "numbers")
    assert "Not written yet" in shown[-1] and "agree" in shown[-1]
    assert not exercises.check(
        lambda lm, s: np.ones(3), solution, lambda: np.arange(3.0), None, [1], "numbers"
    )
    assert "Not yet" in shown[-1] and "disagree" in shown[-1]
    assert not exercises.check(
        lambda lm, s: np.ones(2), solution, lambda: np.arange(3.0), None, [1], "numbers"
    )
    assert "shape" in shown[-1]


def test_the_landing_findings_say_the_causal_result_and_the_central_claim_in_words(tmp_path: Path):
    """The knockout's verdict becomes a sentence naming the layers the answer needs before the final
    ones; the central claim's verdict (or why there is none) is said; agreeing families are said once."""
    knockout = {
        "model": "m",
        "trained": True,
        "summary": {"final_layers": [6, 7], "text": {"critical_layers": [1, 2, 5, 7]}},
    }
    results = {
        part: {"08_knockout": knockout, "09_text_image_conflict": {"model": "m"}}
        for part in ("paligemma", "qwen2vl")
    }
    late = {**FINDING, "claim_id": "retrieve-late", "chapter": "08_knockout", "verdict": "does not hold"}
    central = {
        **FINDING,
        "claim_id": "text-dominates",
        "chapter": "09_text_image_conflict",
        "verdict": "not comparable on these models",
        "reason": "this organism never saw a textual hint in training",
    }
    per_part = {part: [dict(late), dict(central)] for part in results}
    text = pages.findings_fragment(tmp_path, per_part, results)
    prose = text.split("\n\n")[1]
    assert "On PaliGemma and Qwen2-VL alike, 0 of the 2 claims tested hold and 1 does not" in prose
    assert "(PaliGemma: layers 1-2 and 5; Qwen2-VL: layers 1-2 and 5)" in prose
    assert "gets no verdict on these models (chapter 9): this organism never saw a textual hint" in prose
    assert sentences(prose) <= 5
    per_part["qwen2vl"] = [{**late, "verdict": "holds"}, {**central, "verdict": "not robust"}]
    text = pages.findings_fragment(tmp_path, per_part, results)
    assert "On PaliGemma, 0 of the 2" in text and "On Qwen2-VL, 1 of the 2 claims tested holds" in text
    assert "(PaliGemma: layers 1-2 and 5)" in text
    assert "(chapter 9): PaliGemma, not comparable on these models; Qwen2-VL, not robust." in text


def test_what_holds_describes_the_organisms_the_verdicts_are_about():
    """The note on the models follows the organisms that ran: the `shapes` organisms' saturated regime,
    or a deep organism's own measured counting and clean loss, read from its training report."""
    import json

    from vlmlib.models import named_model

    shapes = {"paligemma": {"01_representations": {"model": "paligemma-shapes"}}}
    assert "near certainty" in pages.organisms_paragraph(shapes)
    assert (
        "near certainty"
        in pages.summary_markdown(
            {"paligemma": []},
            {"paligemma": {"x": {"model": "paligemma-shapes", "description": "embedded model organism"}}},
        )[-2]
    )
    deep = {
        "paligemma": {"01_representations": {"model": "paligemma-scenes"}},
        "qwen2vl": {"01_representations": {"model": "qwen2vl-shapes"}},
    }
    report = json.loads((named_model("paligemma-scenes").folder / "training_log.json").read_text())["report"]
    said = pages.organisms_paragraph(deep)
    assert f"counts {report['accuracy']:.0%} of {report['n']} held-out scenes" in said
    assert "near certainty" not in said and "Qwen2-VL ran on other models" in said
