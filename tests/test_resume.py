"""Resuming a part: a chapter is skipped only when its fingerprint matches and what it published is there
and whole (its notebook, and a results file that parses and carries the chapter's fields); otherwise it
runs again and the runner says why."""

import json

import nbformat
import pytest

from vlmlib.book import runner as book
from vlmlib.book.manifest import published_problem
from vlmlib.book.plan import make_plan
from vlmlib.book.results import read_results, results_problem

SOURCE = """# %% [markdown]
# # {n}. {title}

# %% tags=["parameters"]
model = "paligemma-shapes"
dataset = "shapes"
n_samples = 2
seed = 0
"""
# two chapters without a spec (any results object will do) and one of the book's (its fields are checked)
CHAPTERS = ("01_alpha", "02_beta", "06_residual_update")


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    for stem in CHAPTERS:
        (tmp_path / "notebooks" / f"{stem}.py").write_text(SOURCE.format(n=int(stem[:2]), title=stem[3:]))
    monkeypatch.setattr(book, "replicates", lambda model: [f"{model}-seed1"])
    return tmp_path


@pytest.fixture
def ran(monkeypatch):
    """The chapters executed, as keys ("01_alpha", "seeds/<replicate>/01_alpha"); each writes a notebook and
    a whole results file."""
    log = []

    def execute(source, out_dir, parameters, kernel=None, progress=False, cache_dir=None, exercises=True):
        folder = "" if exercises else f"seeds/{parameters['model']}/"
        log.append(folder + source.stem)
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {source.stem}")])
        nbformat.write(nb, out_dir / f"{source.stem}.ipynb")
        results = {
            "chapter": source.stem,
            "model": parameters["model"],
            "params": parameters,
            "findings": [],
        }
        (out_dir / f"{source.stem}.json").write_text(json.dumps(results))
        return out_dir / f"{source.stem}.ipynb"

    monkeypatch.setattr(book, "execute_chapter", execute)
    return log


def run(project):
    book.run_plan(make_plan(root=project, only=["paligemma"]), progress=False)


@pytest.mark.parametrize(
    "key, damage, why",
    [
        ("01_alpha", lambda p: p.write_text(p.read_text()[:9]), "01_alpha.json is unreadable"),
        ("01_alpha", lambda p: p.write_text(""), "01_alpha.json is unreadable"),
        ("02_beta", lambda p: p.unlink(), "02_beta.json is missing"),
        ("02_beta", lambda p: p.write_text("[1, 2]"), "02_beta.json is not a JSON object"),
        ("02_beta", lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "02_beta.json is unreadable"),
        (
            "06_residual_update",
            lambda p: p.write_text(json.dumps({"chapter": "06_residual_update", "model": "m"})),
            "06_residual_update.json is incomplete (no params, findings)",
        ),
        (
            "06_residual_update",
            lambda p: p.write_text(p.read_text().replace('"06_residual_update"', '"01_representations"')),
            "06_residual_update.json is chapter '01_representations'",
        ),
        (
            "seeds/paligemma-shapes-seed1/06_residual_update",
            lambda p: p.write_text(p.read_text()[:20]),
            "06_residual_update.json is unreadable",
        ),
        (
            "02_beta",
            lambda p: p.with_suffix(".ipynb").write_text('{"cells": '),
            "02_beta.ipynb is unreadable",
        ),
        ("02_beta", lambda p: p.with_suffix(".ipynb").unlink(), "02_beta.ipynb is missing"),
    ],
)
def test_a_chapter_whose_published_files_are_broken_runs_again(project, ran, capsys, key, damage, why):
    part = project / "book" / "paligemma"
    run(project)
    assert len(ran) == 2 * len(CHAPTERS)
    ran.clear()
    run(project)
    assert ran == []  # whole and unchanged: resumed
    damage(part / f"{key}.json")
    capsys.readouterr()
    run(project)
    assert ran == [key]  # that chapter only, the others still up to date
    said = capsys.readouterr().err
    assert f"paligemma/{key}: its " in said and why in said and "running it again" in said, said
    assert published_problem(part, key, key.rsplit("/", 1)[-1]) is None  # whole again
    read_results(part)  # what `build` reads: readable again
    ran.clear()
    run(project)
    assert ran == []


def test_what_counts_as_a_whole_results_file(tmp_path):
    path = tmp_path / "06_residual_update.json"
    whole = {"chapter": "06_residual_update", "model": "m", "params": {}, "findings": []}
    path.write_text(json.dumps(whole))
    assert results_problem(path) is None
    path.write_text(json.dumps({**whole, "findings": "none"}))
    assert "malformed" in results_problem(path)
    other = tmp_path / "01_alpha.json"  # a chapter without a spec: any JSON object
    other.write_text("{}")
    assert results_problem(other) is None
    assert "missing" in results_problem(tmp_path / "02_beta.json")
