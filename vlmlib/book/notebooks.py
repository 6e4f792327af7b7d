"""Executed chapters made ready for Jupyter Book: the part in the title, a line of links under it."""

from __future__ import annotations

import os
from pathlib import Path

from ..util import atomic_write
from .pages import part_title


def prepare_notebook_for_book(path: str | os.PathLike, part: str) -> Path:
    """Make an executed chapter ready for Jupyter Book: the page title names its part ("3. ... — Qwen2-VL")
    and papermill's injected-parameters cell is hidden (the page shows `show_header`'s table instead).
    The downloadable notebook keeps every cell; only tags and the title change. Written atomically."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    suffix = f" — {part_title(part)}"
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            title, _, rest = cell.source.partition("\n")
            if not title.endswith(suffix):
                cell.source = title + suffix + ("\n" + rest if rest else "")
            break
    return atomic_write(path, lambda f: nbformat.write(nb, f))


PAGE_NOTE_TAG = "page-note"  # the cell `set_page_note` owns; nothing else carries this tag


def set_page_note(path: str | os.PathLike, links: str | None = None, note: str | None = None) -> None:
    """Put a line of links (the same chapter for the other families, the side-by-side view) and an
    optional notice (e.g. that the part's pages come from different runs) right under a built chapter's
    title; with neither, take the cell away. Idempotent; rewritten atomically only when it changes."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if PAGE_NOTE_TAG not in c.metadata.get("tags", [])]
    text = "\n\n".join(filter(None, [links, f"```{{note}}\n{note}\n```" if note else None]))
    if text:
        note_cell = nbformat.v4.new_markdown_cell(text)
        note_cell.metadata["tags"] = [PAGE_NOTE_TAG]
        title = next(
            (i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("# ")), -1
        )
        cells.insert(title + 1, note_cell)
    if [c.source for c in cells] == [c.source for c in nb.cells]:
        return
    nb.cells = cells
    atomic_write(path, lambda f: nbformat.write(nb, f))
