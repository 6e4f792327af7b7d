"""The whole book, built on the embedded models, is itself a test (built once per run: conftest.built_book)."""

import json
import re

from vlmlib.book import DEFAULT_MODELS, chapters


def test_every_chapter_renders_with_its_figure_for_each_family(built_book):
    html = built_book / "_build" / "html"
    assert (html / "index.html").is_file()
    for part in DEFAULT_MODELS:
        for source in chapters(built_book):
            page = (html / "book" / part / f"{source.stem}.html").read_text()
            assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', page), f"{part}/{source.stem} has no figure"
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
