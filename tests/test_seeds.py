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


def _entry(model: str, run: str = "run-1", code: str = "c1", finished: str = "2025-01-01T00:00:00", **params):
    """A run-manifest entry as the runner writes it (vlmlib.book.runner)."""
    parameters = {"model": model, **params}
    return {
        "run_id": run,
        "finished": finished,
        "model": model,
        "parameters": parameters,
        "fingerprint": {"parameters": parameters, "code": code, "model": model, "dataset": None, "key": run},
    }


def _write_manifest(part, entries: dict) -> None:
    (part / "run-manifest.json").write_text(json.dumps({"chapters": entries}))


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
    # the replicates ran with the page's parameters and code (the run manifest says so)
    _write_manifest(
        part,
        {
            "01_representations": _entry("toy-shapes"),
            **{f"seeds/toy-shapes-seed{s}/01_representations": _entry(f"toy-shapes-seed{s}") for s in (1, 2)},
        },
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
    # the headline verdict is decided on every seed: seeds 0 and 1 hold, seed 2 is unresolved
    decided = "the 3 training seeds disagree: holds in seeds 0, 1; unresolved in seed 2"
    assert f"| **seed-dependent** | {decided}" in page


def test_a_claim_holds_across_seeds_only_if_it_holds_in_every_seed():
    assert findings.across_seeds({0: findings.HOLDS, 1: findings.HOLDS, 2: findings.HOLDS}) == (
        findings.HOLDS,
        "holds in all 3 training seeds",
    )
    verdict, why = findings.across_seeds({0: findings.HOLDS, 1: findings.FAILS})
    assert verdict == findings.SEED_DEPENDENT and why.endswith("holds in seed 0; does not hold in seed 1")
    assert findings.across_seeds({0: findings.NOT_ROBUST, 1: findings.NOT_ROBUST})[0] == findings.NOT_ROBUST


def test_a_part_without_replicates_has_no_seed_results_or_column(tmp_path):
    part = tmp_path / "qwen2vl"
    part.mkdir()
    (part / "01_representations.json").write_text(json.dumps(_representations("qwen2vl", 0.9, 0.5)))
    assert seeds.seed_results(part) == {}
    page = bookpages.what_holds_markdown(
        {"qwen2vl": {"01_representations": _representations("qwen2vl", 0.9, 0.5)}}, {}
    )
    assert "*Across training seeds, " not in page and "same in every training seed" not in page
    assert "seed-dependent** |" not in page  # no verdict decided across seeds


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


def _part_with_replicates(tmp_path, page: dict, replicates: dict[int, dict]):
    """A part folder: chapter 1's results on the page (seed 0) and on each replicate, and a run manifest
    with `page` as the page's entry and replicates[seed] as each replicate's."""
    part = tmp_path / "paligemma"
    drops = {0: (0.9, 0.5), 1: (0.9, 0.6), 2: (0.9, 0.7)}
    entries = {"01_representations": page}
    for seed, (early, late) in drops.items():
        folder = part if seed == 0 else part / "seeds" / f"toy-shapes-seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        model = "toy-shapes" if seed == 0 else f"toy-shapes-seed{seed}"
        results = {**_representations("paligemma", early, late, model=model), "params": {"n_samples": 6}}
        (folder / "01_representations.json").write_text(json.dumps(results))
        if seed:
            entries[f"seeds/toy-shapes-seed{seed}/01_representations"] = replicates[seed]
    _write_manifest(part, entries)
    return part


def test_replicate_results_from_another_run_are_left_out_and_named(tmp_path):
    """Issue: chapter 1 ran with replicates at n_samples=8, then again with --no-replicates at 6: the
    replicates' results (n_samples=8) must not be shown as this page's spread."""
    page = _entry("toy-shapes", run="run-2", finished="2025-02-01T00:00:00", n_samples=6)
    old = {s: _entry(f"toy-shapes-seed{s}", run="run-1", n_samples=8) for s in (1, 2)}
    part = _part_with_replicates(tmp_path, page, old)
    by_seed = seeds.seed_results(part)
    assert dict(by_seed) == {}  # no replicate matches: no spread at all
    assert set(by_seed.left_out["01_representations"]) == {1, 2}
    section = seeds.chapter_section("01_representations", by_seed, "paligemma")
    assert section.startswith("## Across training seeds")
    assert "same parameters and samples" not in section and "seed 0 (this page)" not in section  # no table
    assert (
        "The results of seeds 1 and 2 (`toy-shapes-seed1`, `toy-shapes-seed2`) are from an older run (run-1) "
        "with other parameters (n_samples=8 against 6 in the page's run) and are not shown." in section
    )
    assert "Run this chapter again with its training-seed replicates" in section

    holds = bookpages.what_holds_markdown({"paligemma": {"01_representations": {}}}, {"paligemma": by_seed})
    assert "| none from the pages' runs (see below)" in holds  # the seed column
    assert "Not counted for PaliGemma: the training-seed replicates' results of 01_representations" in holds
    assert "*Across training seeds, PaliGemma:*" in holds and "| seed 1 |" not in holds
    assert "Run chapter 01_representations again with its training-seed replicates" in holds


def test_only_the_replicates_that_match_the_page_make_its_spread(tmp_path):
    page = _entry("toy-shapes", n_samples=6)
    replicates = {
        1: _entry("toy-shapes-seed1", n_samples=6),  # the page's run: shown
        2: _entry("toy-shapes-seed2", run="run-0", code="c0", n_samples=6),  # other code: left out
    }
    by_seed = seeds.seed_results(_part_with_replicates(tmp_path, page, replicates))
    assert sorted(by_seed) == [0, 1] and list(by_seed.left_out["01_representations"]) == [2]
    section = seeds.chapter_section("01_representations", by_seed, "paligemma")
    assert "| seed 0 (this page) | seed 1 |" in section and "seed 2 |" not in section
    assert "The results of seed 2 (`toy-shapes-seed2`) are from" in section and "other code" in section
    holds = bookpages.what_holds_markdown({"paligemma": by_seed[0]}, {"paligemma": by_seed})
    assert "| seed 0 | seed 1 |" in holds and "| seed 2 |" not in holds
    assert "results of 01_representations (seed 2)" in holds


@pytest.mark.parametrize(
    "page, replicate, why",
    [
        (_entry("a", n_samples=6), _entry("a-seed1", n_samples=6), None),  # the model aside, the same
        (
            _entry("a", n_samples=6, finished="2025-01-01"),
            _entry("a-seed1", run="r0", finished="2024-12-01", n_samples=6, seed=3),
            "from an older run (r0) with other parameters (seed=3 against 0 in the page's run)",
        ),
        (
            _entry("a", dataset="/data/x"),
            _entry("a-seed1", dataset="/data/y", code="c2"),
            'other parameters (dataset="/data/y" against "/data/x" in the page\'s run) and other code',
        ),
        (_entry("a", n_samples=6), {"run_id": None, "note": "old"}, "without a record in run-manifest.json"),
        (None, _entry("a-seed1"), "not comparable: run-manifest.json has no record of this page's run"),
    ],
)
def test_a_replicate_run_matches_the_page_on_parameters_code_and_data(page, replicate, why):
    found = seeds.run_mismatch(page, replicate, {"seed": 0}, {})
    assert found == why if why is None else why in found


def test_a_run_without_replicates_leaves_them_and_the_pages_say_they_are_stale(tmp_path, monkeypatch):
    """End to end through the runner: with replicates at n_samples=3, then --no-replicates at 2 (the
    replicates' results are left as they were, and not shown), then with replicates again (shown)."""
    from vlmlib.book import runner as book
    from vlmlib.book.plan import make_plan

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_representations.py").write_text(
        '# %% tags=["parameters"]\nmodel = "paligemma-shapes"\ndataset = "shapes"\nn_samples = 2\nseed = 0\n'
    )
    monkeypatch.setattr(book, "replicates", lambda model: [f"{model}-seed1", f"{model}-seed2"])

    def execute(source, out_dir, parameters, kernel=None, progress=False, cache_dir=None, exercises=True):
        import nbformat

        n = parameters.get("n_samples", 2)
        nbformat.write(nbformat.v4.new_notebook(), out_dir / f"{source.stem}.ipynb")
        results = _representations("paligemma", 0.9, 0.5 + n / 100, model=parameters["model"])
        (out_dir / f"{source.stem}.json").write_text(json.dumps({**results, "params": {"n_samples": n}}))
        return out_dir / f"{source.stem}.ipynb"

    monkeypatch.setattr(book, "execute_chapter", execute)
    part = tmp_path / "book" / "paligemma"

    def section():
        return seeds.chapter_section("01_representations", seeds.seed_results(part), "paligemma")

    book.run_plan(
        make_plan(root=tmp_path, only=["paligemma"], parameters=[("n_samples", "3")]), progress=False
    )
    assert "| seed 0 (this page) | seed 1 | seed 2 |" in section() and "not shown" not in section()
    book.run_plan(
        make_plan(root=tmp_path, only=["paligemma"], parameters=[("n_samples", "2")], replicates=False),
        progress=False,
    )
    assert (part / "seeds" / "paligemma-shapes-seed1" / "01_representations.json").is_file()  # untouched
    assert "seed 0 (this page)" not in section()
    assert "n_samples=3 against 2 in the page's run" in section() and "are not shown" in section()
    book.run_plan(
        make_plan(root=tmp_path, only=["paligemma"], parameters=[("n_samples", "2")]), progress=False
    )
    assert "| seed 0 (this page) | seed 1 | seed 2 |" in section() and "not shown" not in section()
