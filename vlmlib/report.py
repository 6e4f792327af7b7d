"""What every chapter shares: the model banner, results files, the paper's transcribed values."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

PAPER_VALUES_DIR = Path(__file__).parent / "paper_values"


def display_name(value) -> str:
    """A name for the page: a local folder or file shows as its last path component, never a machine path."""
    text = str(value)
    if os.sep in text and Path(text).expanduser().exists():
        return Path(text).name
    return text


def model_banner(lm) -> str:
    """Markdown that says which model a page is about, and warns loudly when it is untrained."""
    if lm.trained:
        kind = "trained model organism" if "organism" in lm.description else "trained checkpoint"
    else:
        kind = "random weights"
    text = (f"**Model:** `{display_name(lm.name)}` ({FAMILY_TITLES.get(lm.family.name, lm.family.name)} family, "
            f"{kind}; {lm.num_layers} decoder layers, {lm.num_vision_layers} vision-tower layers).")
    if not lm.trained:
        text += ("\n\n> **Untrained model.** These weights are random: the numbers below show the method "
                 "at work, not a finding about a vision-language model.")
    return text


def header_markdown(lm, parameters: dict, n_used: int | None = None) -> str:
    """The banner, then one short table of the parameters this page ran with (the values actually used,
    machine paths shortened to a name; the results path is plumbing and left out)."""
    shown = {k: v for k, v in parameters.items() if k not in ("results", "model")}
    if n_used is not None and n_used != shown.get("n_samples"):
        shown["samples used"] = n_used
    cells = [f"`{k}` = {_short(v)}" for k, v in shown.items()]
    prompt = {k: v for k, v in lm.prompt_settings().items() if k not in shown}
    cells += [f"`{k}` = {_short(v if v not in (None, '') else 'none')}" for k, v in prompt.items()]
    lines = [model_banner(lm), "", "| parameters of this run |", "|---|"]
    # Three parameters to a row keeps the block short; the downloadable notebook has the full cell.
    for i in range(0, len(cells), 3):
        lines.append("| " + " · ".join(cells[i:i + 3]) + " |")
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, str):
        return f"`{display_name(value)}`"
    if isinstance(value, (list, tuple)):
        return "`" + ", ".join(str(v) for v in value) + "`"
    return f"`{value}`"


def show_header(lm, parameters: dict, n_used: int | None = None) -> None:
    """Display the model banner and the run's parameters: the first thing under a chapter's title."""
    show_markdown(header_markdown(lm, parameters, n_used))


def show_markdown(text: str) -> None:
    """Markdown rendered on the page (MyST: pipe tables become real tables)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_conclusion(points: list[str]) -> None:
    """A chapter's "What this run shows": Markdown bullets, wrapped like the prose around them."""
    show_markdown("\n".join(f"- {p}" for p in points))


def _plain(value):
    """JSON-safe copy: numpy and torch numbers become Python ones, NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(file) on a temporary file beside `path`, then rename it into place (mode 0644): a
    reader never sees half a file, and an interrupted write leaves only the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
        os.chmod(tmp, 0o644)  # readable like the notebooks beside it (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_results(path: str | os.PathLike, results: dict) -> Path:
    """Write JSON atomically (temporary file, then rename): never a half-written results file.

    A chapter's results (they carry "chapter") also get "findings": the verdicts of the paper's claims
    that chapter answers, by the explicit rules of `vlmlib.findings` (the What-holds page collects them).
    """
    plain = _plain(results)
    if "chapter" in plain and "findings" not in plain:
        from .findings import chapter_findings  # findings reads report's paper values: import here

        plain["findings"] = chapter_findings(plain)
    return atomic_write(path, lambda f: json.dump(plain, f, indent=1))


def verdict_points(results_path: str | os.PathLike) -> list[str]:
    """The chapter's verdicts against the paper, as conclusion bullets, read back from its results file."""
    findings = json.loads(Path(results_path).read_text()).get("findings", [])
    def where(section: str) -> str:
        return f"section {section}" if section[:1].isdigit() else section

    return [f"The paper, {where(f['section'])}: *{f['claim'].rstrip('.')}*. Here: **{f['verdict']}** "
            f"({f['reason'].rstrip('.')})." for f in findings]


def run_info(lm, samples=None, **params) -> dict:
    """The header every results file starts with: the model, how its prompts and images were prepared,
    the parameters, and which images the run used (ids and pixel hashes, so a run can be repeated)."""
    info = {"model": lm.name, "family": lm.family.name, "trained": lm.trained,
            "description": lm.description, "num_layers": lm.num_layers, "num_vision_layers": lm.num_vision_layers,
            "prompt": lm.prompt_settings(), "params": params}
    if samples is not None:
        from .pixelprose import samples_provenance

        info["samples"] = samples_provenance(samples)
        report = getattr(samples, "report", None)  # PixelProse: what was skipped and why
        if report is not None:
            info["sample_report"] = report.as_dict()
    return info


def paper_values(name: str) -> dict:
    """The paper's reported numbers for one analysis, transcribed once into vlmlib/paper_values/<name>.json."""
    path = PAPER_VALUES_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in PAPER_VALUES_DIR.glob("*.json"))
        raise KeyError(f"no transcribed paper values named {name!r}; known: {known}")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the chapter page

FAMILY_TITLES = {"paligemma": "PaliGemma", "qwen2vl": "Qwen2-VL"}  # book part -> name in page titles


def prepare_notebook_for_book(path: str | os.PathLike, part: str) -> Path:
    """Make an executed chapter ready for Jupyter Book: the page title names its part ("3. ... — Qwen2-VL")
    and papermill's injected-parameters cell is hidden (the page shows `show_header`'s table instead).
    The downloadable notebook keeps every cell; only tags and the title change. Written atomically."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    suffix = f" — {FAMILY_TITLES.get(part, part)}"
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
        cell = nbformat.v4.new_markdown_cell(text)
        cell.metadata["tags"] = [PAGE_NOTE_TAG]
        title = next((i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("# ")), -1)
        cells.insert(title + 1, cell)
    if [c.source for c in cells] == [c.source for c in nb.cells]:
        return
    nb.cells = cells
    atomic_write(path, lambda f: nbformat.write(nb, f))
