"""The chapter page's plumbing: family titles, hidden parameters, links under the title, atomic results."""

import json
import os

import nbformat
import pytest

from vlmlib.book.notebooks import PAGE_NOTE_TAG, prepare_notebook_for_book, set_page_note
from vlmlib.book.runner import page_notes
from vlmlib.paper.findings import chapter_findings
from vlmlib.util import write_json


def notebook(path, title="# 3. Attention-output patching"):
    cells = [
        nbformat.v4.new_markdown_cell(title + "\n\ntext"),
        nbformat.v4.new_code_cell("model = 'x'", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("1 + 1"),
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


def test_prepare_names_the_family_and_hides_injected_parameters(tmp_path):
    path = notebook(tmp_path / "03_x.ipynb")
    prepare_notebook_for_book(path, "qwen2vl")
    prepare_notebook_for_book(path, "qwen2vl")  # twice: the title is not suffixed twice
    cells = nbformat.read(path, 4).cells
    assert cells[0].source.splitlines()[0] == "# 3. Attention-output patching — Qwen2-VL"
    assert "remove-cell" in cells[1].metadata["tags"] and "remove-cell" not in cells[2].metadata.get(
        "tags", []
    )
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


def test_page_note_sits_under_the_title_and_is_idempotent(tmp_path):
    path = notebook(tmp_path / "03_x.ipynb")
    set_page_note(path, "links", "mixed runs")
    set_page_note(path, "links", "mixed runs")
    cells = nbformat.read(path, 4).cells
    assert [PAGE_NOTE_TAG in c.metadata.get("tags", []) for c in cells] == [False, True, False, False]
    assert cells[1].source.startswith("links") and "```{note}\nmixed runs\n```" in cells[1].source
    set_page_note(path, None, None)
    assert len(nbformat.read(path, 4).cells) == 3


def test_each_chapter_links_to_the_same_chapter_of_the_other_family(tmp_path):
    for part, stems in {"paligemma": ("01_a", "03_b"), "qwen2vl": ("01_a",)}.items():
        (tmp_path / "book" / part).mkdir(parents=True)
        for stem in stems:
            notebook(tmp_path / "book" / part / f"{stem}.ipynb")
    notes = page_notes(tmp_path)
    links, note = notes[tmp_path / "book" / "paligemma" / "01_a.ipynb"]
    assert "[Qwen2-VL](../qwen2vl/01_a.ipynb)" in links and note is None
    assert "[PaliGemma](../paligemma/01_a.ipynb)" in notes[tmp_path / "book" / "qwen2vl" / "01_a.ipynb"][0]
    assert notes[tmp_path / "book" / "paligemma" / "03_b.ipynb"] == (None, None)  # no counterpart: no link


def test_results_are_atomic_readable_json_with_findings(tmp_path):
    results = {"chapter": "01_representations", "x": float("nan")}
    path = write_json(tmp_path / "r.json", {**results, "findings": chapter_findings(results)})
    data = json.loads(path.read_text())
    assert data["x"] is None and isinstance(data["findings"], list) and len(data["findings"]) == 1
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_results_file_records_the_dtype_and_device_the_run_used(dtype):
    """`dtype=auto` resolves per device: the results file says what the numbers were computed in."""
    from vlmlib import load_model
    from vlmlib.paper.run import run_info

    info = run_info(load_model("paligemma-random", dtype=dtype))
    assert (info["dtype"], info["device"]) == (dtype, "cpu")
