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


def header_markdown(lm, parameters: dict, n_used: int | None = None, note: str | None = None) -> str:
    """The banner, then one short table of the parameters this page ran with (the values actually used,
    machine paths shortened to a name; the results path is plumbing and left out), then `note` (Markdown,
    e.g. that the run's task is not the paper's) where there is one."""
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
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        # the processor's image size, [height, width]: a side in pixels, as the image_size parameter
        return f"`{value[0]}`" if value[0] == value[1] else f"`{value[0]} × {value[1]}`"
    if isinstance(value, str):
        return f"`{display_name(value)}`"
    if isinstance(value, (list, tuple)):
        return "`" + ", ".join(str(v) for v in value) + "`"
    return f"`{value}`"


def show_header(lm, parameters: dict, n_used: int | None = None, note: str | None = None) -> None:
    """Display the model banner and the run's parameters (and `note`): the first thing under a chapter's
    title."""
    show_markdown(header_markdown(lm, parameters, n_used, note))


def show_markdown(text: str) -> None:
    """Markdown rendered on the page (MyST: pipe tables become real tables)."""
    from IPython.display import Markdown, display

    display(Markdown(text))


def show_conclusion(points: list[str]) -> None:
    """A chapter's "What this run shows": Markdown bullets, wrapped like the prose around them."""
    show_markdown("\n".join(f"- {p}" for p in points))


def conclusion_markdown(points: list[str], findings: list[dict], limit: int = 5) -> str:
    """A chapter's conclusion for a person: at most `limit` sentences of prose (the chapter's leading
    points, then one sentence that counts the verdicts), a small table of the paper's claims with the
    verdict here and why, and the chapter's further numbers behind a toggle."""
    lead = list(points[: max(0, limit - 1 if findings else limit)])
    more = list(points[len(lead) :])
    if findings:
        counts = {}
        for f in findings:
            counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
        said = ", ".join(f"{n} {verdict}" for verdict, n in counts.items())
        tested = "claim" if len(findings) == 1 else f"{len(findings)} claims"
        lead.append(f"Of the paper's {tested} this chapter tests: {said} here (the table below says why).")
    lines = [" ".join(p.strip() for p in lead), ""]
    if findings:

        def where(section: str) -> str:
            return f"section {section}" if section[:1].isdigit() else section

        lines += ["| the paper says | here | why |", "|---|---|---|"]
        for f in findings:
            claim = f"{f['claim'].rstrip('.')} ({where(f['section'])})"
            lines.append(f"| {_cell(claim)} | **{f['verdict']}** | {_cell(f['reason'].rstrip('.'))} |")
        lines.append("")
    if more:
        lines += ["```{admonition} More numbers from this run", ":class: dropdown", ""]
        lines += [f"- {p}" for p in more]
        lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def glue_conclusion(points: list[str], findings: list[dict], note: str | None = None) -> None:
    """The conclusion placed near the top of the page, where its `{glue:md}` directive named "conclusion"
    is (MyST format), and its first point as "result", the sentence that opens the main figure's caption.
    `note` (the untrained-model note) opens the conclusion. Nothing is shown where the call is."""
    from IPython.display import Markdown
    from myst_nb import glue

    said = [note, *points] if note else list(points)
    glue("conclusion", Markdown(conclusion_markdown(said, findings)), display=False)
    glue("result", Markdown(points[0].strip() if points else ""), display=False)


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
