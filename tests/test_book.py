"""The whole book, built on the embedded models, is itself a test (built once per run:
conftest.built_book)."""

import json
import re

from vlmlib.book.plan import DEFAULT_MODELS, chapters


def test_every_chapter_renders_with_its_figure_for_each_family(built_book):
    html = built_book / "_build" / "html"
    assert (html / "index.html").is_file()
    for part in DEFAULT_MODELS:
        for source in chapters(built_book):
            page = (html / "book" / part / f"{source.stem}.html").read_text()
            assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', page), (
                f"{part}/{source.stem} has no figure"
            )
            assert "Traceback" not in page, f"{part}/{source.stem} shows an exception"
            assert "Model:" in page, f"{part}/{source.stem} does not say which model it ran on"


def test_results_files_are_written_for_each_chapter(built_book):
    for part, model in DEFAULT_MODELS.items():
        for source in chapters(built_book):
            results = json.loads((built_book / "book" / part / f"{source.stem}.json").read_text())
            assert results["model"] == model and results["params"]["n_samples"] >= 1


def test_chapter1_page_shows_its_numbers(built_book):
    results = json.loads((built_book / "book" / "paligemma" / "01_representations.json").read_text())
    assert len(results["avg_sim"]["vision"]["mean"]) == results["num_layers"]
    page = (built_book / "_build" / "html" / "book" / "paligemma" / "01_representations.html").read_text()
    assert "Consecutive-layer cosine similarity" in page or "Similarity of consecutive layers" in page


def test_every_chapter_reports_its_headlines_across_training_seeds(built_book):
    """Issue 14: each family ships training-seed replicates, every chapter ran on them with the same
    samples, and each chapter page and What holds show the headline numbers per seed."""
    from vlmlib.book.seeds import replicates

    html = built_book / "_build" / "html" / "book"
    holds = (html / "what-holds.html").read_text()
    for part, model in DEFAULT_MODELS.items():
        found = replicates(model)
        assert len(found) >= 1, f"{model} has no training-seed replicate in vlmlib/organisms/"
        for source in chapters(built_book):
            own = json.loads((built_book / "book" / part / f"{source.stem}.json").read_text())
            for name in found:
                theirs = json.loads(
                    (built_book / "book" / part / "seeds" / name / f"{source.stem}.json").read_text()
                )
                assert theirs["model"] == name and theirs["params"]["n_samples"] == own["params"]["n_samples"]
            page = (html / part / f"{source.stem}.html").read_text()
            assert "Across training seeds" in page and "seed 0 (this page)" in page, f"{part}/{source.stem}"
            assert "across seeds: mean (s.d.)" in page
        assert f"Across training seeds, {'PaliGemma' if part == 'paligemma' else 'Qwen2-VL'}" in holds
