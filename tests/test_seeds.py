"""Training-seed replicates (vlmlib.book.seeds): which exist, their results read back, the spread of a
chapter's headline numbers across seeds, and where it lands on the pages."""

import json
import math

import nbformat
import pytest

from vlmlib.book import pages as bookpages
from vlmlib.book import seeds
from vlmlib.paper import claims as findings
from vlmlib.paper.chapters import chapter_spec


def _representations(family: str, early: float, late: float, sem: float = 0.001, model: str = "m") -> dict:
    """Chapter 1 results whose similarity drop is early - late (18 layers: the split is after layer 10)."""
    mean = [early] * 10 + [late] * 8
    return {
        "chapter": "01_representations",
        "family": family,
        "model": model,
        "avg_sim": {"vision": {"mean": mean, "sem": [sem] * 18}},
    }


def test_replicates_are_found_by_name_and_only_for_the_shipped_organism(tmp_path, monkeypatch):
    from vlmlib.models import register_model, unregister_model
    from vlmlib.organisms import catalogue

    for name in (
        "toy-shapes",
        "toy-shapes-seed2",
        "toy-shapes-seed1",
        "toy-shapes-seed10",
        "toy-shapesX-seed1",
        "toy-shapes-seed4",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"model_type": "paligemma"}')
        (tmp_path / name / "training_log.json").write_text(json.dumps({"report": {}}))
    (tmp_path / "toy-shapes-seed3").mkdir()  # no config.json: not a model
    (tmp_path / "toy-shapes-seed4" / "training_log.json").write_text("{}")  # still training: no final report
    toys = [register_model(m) for m in catalogue(tmp_path) if m.trained]
    try:
        assert seeds.replicates("toy-shapes") == ["toy-shapes-seed1", "toy-shapes-seed2", "toy-shapes-seed10"]
        assert seeds.replicates("toy-shapes-seed1") == []  # a replicate has none of its own
        assert seeds.replicates("org/hub-model") == [] and seeds.replicates("no-such") == []
    finally:
        for m in toys:
            unregister_model(m.name)
    assert seeds.training_seed("toy-shapes-seed10") == 10 and seeds.training_seed("toy-shapes") == 0


def test_spread_across_seeds_is_the_sample_standard_deviation_of_the_headlines(tmp_path):
    part = tmp_path / "paligemma"
    values = {0: (0.9, 0.5), 1: (0.9, 0.6), 2: (0.9, 0.9)}  # drops 0.4, 0.3, 0.0 (the last is no drop)
    for seed, (early, late) in values.items():
        folder = part if seed == 0 else part / "seeds" / f"toy-shapes-seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "01_representations.json").write_text(
            json.dumps(_representations("paligemma", early, late))
        )
    by_seed = seeds.seed_results(part)
    assert sorted(by_seed) == [0, 1, 2]
    claim = chapter_spec("01_representations").claims[0]
    across = seeds.claim_across_seeds(claim, by_seed, "paligemma")
    (headline,) = across["headlines"]
    drops = [0.4, 0.3, 0.0]
    assert [headline["values"][s][0] for s in (0, 1, 2)] == pytest.approx(drops)
    assert headline["mean"] == pytest.approx(sum(drops) / 3)
    mean = sum(drops) / 3
    assert headline["sd"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in drops) / 2))
    assert across["verdicts"][findings.HOLDS] == 2 and across["verdicts"][findings.UNRESOLVED] == 1
    assert seeds.verdict_summary(across) == "holds in 2 of 3 seeds, unresolved in 1"

    section = seeds.chapter_section("01_representations", by_seed, "paligemma")
    assert section.startswith("## Across training seeds")
    assert (
        "| seed 0 (this page) | seed 1 | seed 2 |" in section
        and "| **verdict** | holds | holds | unresolved |" in section
    )
    assert seeds.chapter_section("02_contributions", by_seed, "paligemma") is None  # no replicate ran it

    page = bookpages.what_holds_markdown({"paligemma": by_seed[0]}, {"paligemma": by_seed})
    assert "*Across training seeds, PaliGemma:*" in page and "holds in 2 of 3 seeds, unresolved in 1" in page
    assert "| 0 of 1 (3 seeds)" in page  # of the claims whose chapter ran on every seed, none has one verdict


def test_a_part_without_replicates_has_no_seed_results_or_column(tmp_path):
    part = tmp_path / "qwen2vl"
    part.mkdir()
    (part / "01_representations.json").write_text(json.dumps(_representations("qwen2vl", 0.9, 0.5)))
    assert seeds.seed_results(part) == {}
    page = bookpages.what_holds_markdown(
        {"qwen2vl": {"01_representations": _representations("qwen2vl", 0.9, 0.5)}}, {}
    )
    assert "training seed" not in page


def test_the_section_goes_before_the_exercises_once(tmp_path):
    path = tmp_path / "01_representations.ipynb"
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Title"),
            nbformat.v4.new_markdown_cell("## What this run shows"),
            nbformat.v4.new_markdown_cell("## Exercises\n\n1. ..."),
        ]
    )
    nbformat.write(nb, path)
    seeds.set_seed_section(path, "## Across training seeds\n\nfirst\n")
    seeds.set_seed_section(path, "## Across training seeds\n\nsecond\n")
    sources = [c.source for c in nbformat.read(path, 4).cells]
    assert sources == [
        "# Title",
        "## What this run shows",
        "## Across training seeds\n\nsecond\n",
        "## Exercises\n\n1. ...",
    ]
    seeds.set_seed_section(path, None)
    assert [c.source for c in nbformat.read(path, 4).cells] == [
        "# Title",
        "## What this run shows",
        "## Exercises\n\n1. ...",
    ]


def test_verdict_summary_reads_as_english():
    def across(verdicts):
        return {
            "seeds": list(range(len(verdicts))),
            "verdicts": {v: verdicts.count(v) for v in findings.VERDICTS},
        }

    assert seeds.verdict_summary(across([findings.HOLDS] * 2)) == "holds in both seeds"
    assert seeds.verdict_summary(across([findings.FAILS] * 3)) == "does not hold in all 3 seeds"
    assert (
        seeds.verdict_summary(across([findings.HOLDS, findings.UNRESOLVED]))
        == "holds in 1 of 2 seeds, unresolved in 1"
    )
