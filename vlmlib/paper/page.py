"""What every chapter page shows around its results: the model banner, the parameters, Markdown, the
conclusion."""

from __future__ import annotations

import json
import os
from pathlib import Path


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
    text = (
        f"**Model:** `{display_name(lm.name)}` ({lm.family.title} family, "
        f"{kind}; {lm.num_layers} decoder layers, {lm.num_vision_layers} vision-tower layers)."
    )
    if not lm.trained:
        text += (
            "\n\n> **Untrained model.** These weights are random: the numbers below show the method "
            "at work, not a finding about a vision-language model."
        )
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
        lines.append("| " + " · ".join(cells[i : i + 3]) + " |")
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


def verdict_points(results_path: str | os.PathLike) -> list[str]:
    """The chapter's verdicts against the paper, as conclusion bullets, read back from its results file."""
    findings = json.loads(Path(results_path).read_text()).get("findings", [])

    def where(section: str) -> str:
        return f"section {section}" if section[:1].isdigit() else section

    return [
        f"The paper, {where(f['section'])}: *{f['claim'].rstrip('.')}*. Here: **{f['verdict']}** "
        f"({f['reason'].rstrip('.')})."
        for f in findings
    ]
