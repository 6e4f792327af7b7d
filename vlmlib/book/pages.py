"""Pages generated at build time from the chapters' results files: What holds, side by side, provenance.

`generate_pages(root, parts)` is called by the book runner after the chapters ran and before the HTML
build; it returns the pages it wrote. Everything on these pages is read from book/<part>/<chapter>.json
(what the chapters wrote), the executed notebooks' papermill metadata, git and the installed packages:
nothing is typed by hand. The pages are build products (.gitignore).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import inspect
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..families import UnsupportedModelError, family_named
from ..models import named_model
from ..paper import claims as F
from ..paper.chapters import all_claims, chapter_spec
from ..paper.figures import COLUMN_WIDTH, OKABE_ITO, finish
from ..paper.findings import all_findings
from ..paper.format import cell, layer_list
from ..paper.page import display_name
from ..util import atomic_write, sha256_file
from . import seeds
from .results import load_results

GENERATED_DIR = "_generated"  # figures, under book/
PAGES = ("what-holds.md", "side-by-side.md", "provenance.md")
# One colour per book part, in order, from the book's Okabe-Ito palette (distinguishable with every common
# colour-vision deficiency). The chapters draw vision in blue and text in orange, so parts start elsewhere.
PART_COLOURS = [OKABE_ITO[i] for i in (4, 2, 3, 5, 7, 6)]
FIGSIZE = (COLUMN_WIDTH, 3.4)  # the book's text column (680 px at 100 dpi)
DPI = 150
PACKAGES = (
    "torch",
    "transformers",
    "numpy",
    "scikit-learn",
    "matplotlib",
    "pillow",
    "datasets",
    "safetensors",
    "papermill",
    "jupytext",
    "nbformat",
    "jupyter-book",
    "myst-nb",
    "sphinx",
)
VERDICT_MARK = {v: f"**{v}**" for v in F.VERDICTS}


# ---------------------------------------------------------------- reading what the chapters wrote


def part_title(part: str) -> str:
    """A book part's name on a page: its family's title ("Qwen2-VL")."""
    try:
        return family_named(part).title
    except UnsupportedModelError:
        return part


def chapter_names(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.py"))


def chapter_title(root: Path, chapter: str) -> str:
    """The chapter's H1 from its source ("3. Attention-output patching"), without the family suffix."""
    source = root / "notebooks" / f"{chapter}.py"
    if source.is_file():
        for line in source.read_text().splitlines():
            match = re.match(r"#\s+#\s+(.+)", line)
            if match:
                return match.group(1).strip()
    return chapter


def chapter_link(part: str, chapter: str, anchor: str | None = None, text: str | None = None) -> str:
    """A MyST link from a page in book/ to an executed chapter page book/<part>/<chapter>.ipynb."""
    target = f"{part}/{chapter}.ipynb" + (f"#{anchor}" if anchor else "")
    return f"[{text or part_title(part)}]({target})"


def _save(fig, path: Path) -> None:
    """A PNG written atomically: a half-written figure never reaches the book."""
    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png"), binary=True)


def _write(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


# ---------------------------------------------------------------- What holds


def _decided_across_seeds(finding: dict, table: dict | None) -> dict:
    """A seed-0 finding with its verdict decided across training seeds (`claims.across_seeds`), where the
    claim's chapter ran on several seeds; seed 0's own verdict and reason stay in the reason."""
    if table is None:
        return finding
    verdict, why = F.across_seeds({s: f["verdict"] for s, f in table["findings"].items()})
    reason = f"{why}. Seed 0: {finding['verdict']}, {finding['reason']}"
    return {
        **finding,
        "verdict": verdict,
        "reason": reason,
        "seed_0_verdict": finding["verdict"],
        "seed_0_reason": finding["reason"],
    }


def decided_findings(
    results: dict[str, dict[str, dict]], by_seed: dict[str, dict[int, dict[str, dict]]] | None = None
):
    """(per_part, across, left_out, by_seed): every claim's finding per book part, its verdict decided across
    training seeds where replicates ran (see `what_holds_markdown`)."""
    per_part = {part: all_findings(chapters, part) for part, chapters in results.items()}
    # replicate results from runs that do not match the pages': {part: {chapter: {seed: (model, why)}}}
    left_out = {
        part: found.left_out
        for part, found in (by_seed or {}).items()
        if getattr(found, "left_out", None) and part in results
    }
    by_seed = {part: found for part, found in (by_seed or {}).items() if found and part in results}

    def matching(part: str, claim) -> dict:  # the seeds whose results of the claim's chapter may be shown
        stale = left_out.get(part, {}).get(claim.chapter, {})
        return {s: r for s, r in by_seed[part].items() if s not in stale}

    across = {
        part: {
            c.claim_id: seeds.claim_across_seeds(c, matching(part, c), part)
            if len(matching(part, c)) > 1
            else None
            for c in all_claims()
        }
        for part in by_seed
    }
    for part, tables in across.items():  # the headline verdict is decided on every seed
        per_part[part] = [_decided_across_seeds(f, tables.get(f["claim_id"])) for f in per_part[part]]
    return per_part, across, left_out, by_seed


def _titles(found: list[dict], verdict: str) -> list[str]:
    titles = {c.claim_id: c.title for c in all_claims()}
    return [titles.get(f["claim_id"], f["claim_id"]).lower() for f in found if f["verdict"] == verdict]


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def family_sentences(part: str, found: list[dict], chapters: dict[str, dict]) -> list[str]:
    """A family's findings in plain words: which of the paper's claims hold, which do not, which the run
    cannot settle; generated from the verdicts, so it follows new results without rewriting."""
    name = part_title(part)
    ran = [f for f in found if f["chapter"] in chapters]
    if not ran:
        return [f"No chapter has run for {name} yet, so there is nothing to report."]
    model = next(iter(chapters.values())).get("model", "?")
    trained = all(r.get("trained", True) for r in chapters.values())
    said = [
        f"On {name} (the model {display_name(model)}), {len(ran)} of the paper's {len(found)} claims were "
        f"tested{'' if trained else ', on random weights, so none gets a verdict'}."
    ]
    if not trained:
        return said
    holds, fails = _titles(ran, F.HOLDS), _titles(ran, F.FAILS)
    open_ = _titles(ran, F.UNRESOLVED) + _titles(ran, F.NOT_ROBUST) + _titles(ran, F.SEED_DEPENDENT)
    cannot = _titles(ran, F.NOT_COMPARABLE)
    if holds:
        said.append(f"What holds: {_listed(holds)}.")
    if fails:
        said.append(f"What does not hold: {_listed(fails)}.")
    if open_:
        said.append(
            f"Not settled by this run (within the noise, not robust, or different between training "
            f"seeds): {_listed(open_)}."
        )
    if cannot:
        said.append(f"These models cannot answer: {_listed(cannot)}.")
    return said


CAN_AND_CANNOT = (
    "**What the organisms can and cannot tell.** They are tiny models with the paper's architectures, "
    "trained here until they really answer the counting task, so they can show whether the paper's "
    "mechanism is what such a model learns and where in its layers the image is read. They cannot stand "
    "in for a 3B model's numbers: they answer with near certainty, where the paper's targets sat far down"
    " the model's ranking, so measures that need that regime are marked not comparable rather than forced"
    " into a verdict."
)
CAN_AND_CANNOT_DEEP = (
    "**What the deep organisms can and cannot tell.** They have the paper's decoder depths and were built "
    "as adapter-based models are: a language model trained on text first, a vision tower and an adapter "
    "trained onto it, then a joint tune. So they can show whether the paper's mechanism is what such a "
    "model learns, at the paper's layer groups, and whether a textual prior overrides the image. They "
    "count well short of certainty, so an intervention can move the answer either way; they still cannot "
    "stand in for a 3B model's numbers."
)


def organism_reports(results: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """{part: the training report of the organism its pages ran on}, for the deep organisms (their
    training_log.json holds a held-out `report`); parts on other models are left out."""
    reports = {}
    for part, chapters in results.items():
        model = next((r.get("model") for r in chapters.values() if r.get("model")), None)
        named = named_model(model) if model else None
        log = named.folder / "training_log.json" if named is not None and named.folder is not None else None
        if log is not None and log.is_file():
            try:
                report = json.loads(log.read_text()).get("report")
            except (OSError, ValueError):
                report = None
            if report and "accuracy" in report:
                reports[part] = {**report, "model": model}
    return reports


def organisms_paragraph(results: dict[str, dict[str, dict]]) -> str:
    """What holds' note on the models the verdicts are about: the `shapes` organisms' saturated regime, or
    each deep organism's measured counting and clean answer loss (from its training report)."""
    deep = organism_reports(results)
    if not deep:
        return (
            "The model organisms are tiny models trained here (see the model card): 16 image tokens, one per "
            "cell of a 4x4 grid, and answers they predict with near certainty (a clean loss near 0.0002 "
            "nats, where the paper's target tokens sat at 15-20 nats). Claims that need the paper's regime "
            "are marked *not comparable on these models* rather than forced into a verdict."
        )
    measured = "; ".join(
        f"{display_name(r['model'])} counts {r['accuracy']:.0%} of {r['n']} held-out scenes, median clean "
        f"answer loss {r['answer_loss']['quantiles_10_25_50_75_90'][2]:.2f} nats"
        for r in deep.values()
    )
    others = [part_title(p) for p in results if p not in deep]
    return (
        "The deep organisms are small models trained here (see the model card): the paper's decoder "
        "depths, a 128-pixel scene of 1 to 9 objects seen as 64 image tokens, answers far from certain "
        f"({measured}; the paper's target tokens sat at 15-20 nats)."
        + (f" {_listed(others)} ran on other models (the model card describes each)." if others else "")
    )


def summary_markdown(per_part: dict[str, list[dict]], results: dict[str, dict[str, dict]]) -> list[str]:
    """What holds' opening: a plain-language summary per family, then what the organisms can tell."""
    lines = []
    for part, found in per_part.items():
        lines += [" ".join(family_sentences(part, found, results.get(part, {}))), ""]
    organisms = any(
        "organism" in str(r.get("description", ""))
        for chapters in results.values()
        for r in chapters.values()
    )
    if organisms:
        lines += [CAN_AND_CANNOT_DEEP if organism_reports(results) else CAN_AND_CANNOT, ""]
    return lines


INTRO_FIGURE = ("08_knockout", "01_representations")  # the landing page's figure: the first that was drawn


def _tally(tested: list[dict]) -> str:
    """A family's verdicts counted in words: '2 of the 10 claims tested hold (a and b) and 3 do not
    (c, d and e); the rest the run cannot settle'."""
    holds, fails = _titles(tested, F.HOLDS), _titles(tested, F.FAILS)
    text = f"{len(holds)} of the {len(tested)} claims tested " + ("holds" if len(holds) == 1 else "hold")
    text += f" ({_listed(holds)})" if holds else ""
    text += f" and {len(fails)} " + ("does not" if len(fails) == 1 else "do not")
    text += f" ({_listed(fails)})" if fails else ""
    return text + "; the rest the run cannot settle"


def _causal_sentence(per_part: dict[str, list[dict]], ran: dict[str, dict]) -> list[str]:
    """Chapter 8's knockout, the book's causal test of where the answer reads the image, in one sentence:
    which layers before the final ones the answer needs, per family (when the verdict says which)."""
    early, late = [], []
    for part, found in per_part.items():
        summary = ran.get(part, {}).get("08_knockout", {}).get("summary", {})
        knockout, final = summary.get("text", {}), set(summary.get("final_layers", []))
        for f in found:
            if f["claim_id"] != "retrieve-late" or "critical_layers" not in knockout:
                continue
            before = [layer for layer in knockout["critical_layers"] if layer not in final]
            if f["verdict"] == F.FAILS and before:
                early.append(f"{part_title(part)}: {layer_list(before)}")
            elif f["verdict"] == F.HOLDS:
                late.append(part_title(part))
    if early:
        return [
            "The clearest result is causal (chapter 8): hiding the image from the text in a single layer "
            f"before the final ones costs answers ({'; '.join(early)}), so these models read the image "
            "early, where the paper places the reading late."
        ]
    if late:
        return [
            f"The clearest result is causal (chapter 8): on {_listed(late)} only hiding the image in the "
            "final layers costs answers, so the image is read late, as the paper proposes."
        ]
    return []


def _central_claim_sentence(per_part: dict[str, list[dict]], ran: dict[str, dict]) -> list[str]:
    """The paper's central claim (textual dominance, chapter 9): its verdict per family, or why the
    organisms cannot give one."""
    tested = [
        (part, f)
        for part, found in per_part.items()
        for f in found
        if f["claim_id"] == "text-dominates" and f["chapter"] in ran.get(part, {})
    ]
    if not tested:
        return []
    claim = "The paper's central claim, that text overrides conflicting image evidence"
    if all(f["verdict"] == F.NOT_COMPARABLE for _, f in tested):
        why = tested[0][1].get("seed_0_reason", tested[0][1]["reason"])  # the reason, not the seed tally
        return [f"{claim}, gets no verdict on these models (chapter 9): {why}."]
    said = "; ".join(f"{part_title(part)}, {f['verdict']}" for part, f in tested)
    return [f"{claim} (chapter 9): {said}."]


def findings_fragment(
    root: Path, per_part: dict[str, list[dict]], results: dict[str, dict[str, dict]]
) -> str:
    """The landing page's findings (book/_generated/findings.md, included by book/intro.md): what the book
    found in a few sentences, and one figure; generated from the verdicts, degrading to a plain statement
    when nothing ran."""
    lines = ["## What this book found", ""]
    ran = {part: chapters for part, chapters in results.items() if chapters}
    if not ran:
        lines += [
            "No chapter has run yet: run the book (the Re-running page says how) and this section will say "
            "what it found.",
            "",
        ]
        return "\n".join(lines)
    sentences = [
        "We ran the paper's analyses on small models of each family, trained here on a counting task, and "
        "turned each of the paper's claims into a test with a stated rule; the models are far smaller than "
        "the paper's, so a claim that does not hold is a finding about them, not a failed reproduction."
    ]
    tallies = {}
    for part, found in per_part.items():
        tested = [f for f in found if f["chapter"] in ran.get(part, {})]
        if tested:
            tallies[part] = _tally(tested)
    if len(tallies) > 1 and len(set(tallies.values())) == 1:  # the families agree: say it once
        names = _listed([part_title(p) for p in tallies])
        sentences.append(f"On {names} alike, {next(iter(tallies.values()))}.")
    else:
        sentences += [f"On {part_title(part)}, {tally}." for part, tally in tallies.items()]
    sentences += _causal_sentence(per_part, ran) + _central_claim_sentence(per_part, ran)
    lines += [" ".join(sentences), ""]
    for chapter in INTRO_FIGURE:
        image = root / "book" / GENERATED_DIR / f"side-by-side-{chapter}.png"
        if image.is_file():
            view = chapter_spec(chapter).side_by_side
            title = chapter_title(root, chapter)
            parts = [p for p in ran if chapter in ran[p]]
            try:
                ylabel = view.extract(ran[parts[0]])[1] if parts else None
            except F.MissingField:  # the figure was drawn; only its axis name is not in these results
                ylabel = "the chapter's main measurement"
            if parts:
                lines += side_by_side_figure(image.name, title, ylabel, view, parts)
                break
    lines += [
        "Every verdict with its numbers, its spread and its rule: [What holds](what-holds.md) · "
        "[Side by side](side-by-side.md)",
        "",
    ]
    return "\n".join(lines)


def what_holds_markdown(
    results: dict[str, dict[str, dict]], by_seed: dict[str, dict[int, dict[str, dict]]] | None = None
) -> str:
    """One row per claim x book part: the paper's number, ours with spread, verdict, reason, link; with
    `by_seed` ({part: {training seed: {chapter: results}}}, vlmlib.book.seeds), the verdicts across seeds
    too. Replicate results that do not match the pages' runs (`seeds.SeedResults.left_out`) are not
    counted, and the page says which."""
    lines = [
        "# What holds",
        "",
        "Each claim of the paper, tested on every model this book ran, by an explicit rule "
        "(`vlmlib.paper.claims`; the rules are listed below the table). This page is generated from the "
        "chapters' results files at build time; nothing on it is typed by hand.",
        "",
        organisms_paragraph(results),
        "",
    ]
    per_part, across, left_out, by_seed = decided_findings(results, by_seed)
    lines[2:2] = summary_markdown(per_part, results)  # the findings in plain words open the page
    counts = {
        part: {v: sum(f["verdict"] == v for f in found) for v in F.VERDICTS}
        for part, found in per_part.items()
    }
    seed_column = bool(across or left_out)
    stable_header = " | same in every training seed" if seed_column else ""
    lines += [
        "| | " + " | ".join(F.VERDICTS) + stable_header + " |",
        "|---|" + "---|" * (len(F.VERDICTS) + seed_column),
    ]
    for part, c in counts.items():
        stable = ""
        if seed_column:
            if part in across:  # of the claims whose chapter ran on every seed, from the pages' runs
                ran = [c for c in all_claims() if all(c.chapter in r for r in by_seed[part].values())]
                same = sum(
                    len([v for v, n in across[part][c.claim_id]["verdicts"].items() if n]) == 1 for c in ran
                )
                stable = f" | {same} of {len(ran)} ({len(by_seed[part])} seeds)"
            elif part in left_out:
                stable = " | none from the pages' runs (see below)"
            else:
                stable = " | no replicates"
        lines.append(f"| {part_title(part)} | " + " | ".join(str(c[v]) for v in F.VERDICTS) + stable + " |")
    lines.append("")
    if across:
        lines += [
            "The organisms were trained by the same recipe with several seeds, and every chapter ran on "
            "each with the same parameters and samples. Each verdict is decided on every seed: a claim "
            "holds only if it holds in every seed, does not hold only if it fails in every seed, and is "
            "*seed-dependent* when seeds disagree (a property of one trained model, not of the recipe). "
            "The numbers in the table are the shipped organism's (seed 0); under each claim, a table gives "
            "its headline numbers and verdict on each seed, with the mean and standard deviation across "
            "seeds (the same table is on the chapter's page).",
            "",
        ]
    for part, chapters in left_out.items():
        lines += [
            f"Not counted for {part_title(part)}: the training-seed replicates' results of "
            + ", ".join(
                f"{chapter} (seed{'s' if len(stale) > 1 else ''} {', '.join(str(s) for s in sorted(stale))})"
                for chapter, stale in sorted(chapters.items())
            )
            + ": they come from runs that do not match these pages (each claim below, and the chapter's "
            "page, says why). Run those chapters again with their replicates to include them.",
            "",
        ]
    for claim in all_claims():
        lines += [
            f"## {claim.title} ({claim.section})",
            "",
            f"*The paper:* {claim.claim}",
            "",
            "| model | paper | ours (± s.e.) | verdict | why | chapter |",
            "|---|---|---|---|---|---|",
        ]
        for part, found in per_part.items():
            f = next(x for x in found if x["claim_id"] == claim.claim_id)
            model = results[part].get(claim.chapter, {}).get("model", "-")
            text = f"{claim.chapter[:2].lstrip('0')}. {part_title(part)}"
            # only pages that exist are linked: a chapter without results did not run (or failed)
            link = (
                chapter_link(part, claim.chapter, claim.anchor, text)
                if claim.chapter in results[part]
                else "not run"
            )
            lines.append(
                f"| {cell(part_title(part))} (`{cell(model)}`) | {cell(f['paper'])} | {cell(f['ours'])} | "
                f"{VERDICT_MARK[f['verdict']]} | {cell(f['reason'])} | {link} |"
            )
        lines.append("")
        for part in dict.fromkeys([*across, *left_out]):
            table = across.get(part, {}).get(claim.claim_id)
            stale = left_out.get(part, {}).get(claim.chapter)
            if table is None and not stale:
                continue
            lines += [f"*Across training seeds, {part_title(part)}:*", ""]
            if table is not None:
                lines += [*seeds.seeds_table(table), ""]
            if stale:
                lines += [seeds.left_out_text(stale, claim.chapter), ""]
    lines += [
        "## The rules",
        "",
        F.RULES,
        "Each claim's own rule:",
        "",
    ]
    for claim in all_claims():
        rule = " ".join(inspect.cleandoc(claim.rule.__doc__ or "").split())  # one line of prose
        lines.append(f"- **{claim.section}** ({claim.chapter}): {rule}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- side by side


def _depth_axis(series: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str, bool]:
    """x values per part: the layer index when every part has the same depth (integer ticks), else the
    relative depth layer / (L - 1), so that an 18- and a 28-layer model share one axis."""
    depths = {len(v) for v in series.values()}
    if len(depths) == 1:
        return {p: np.arange(len(v)) for p, v in series.items()}, "layer", True
    return (
        {p: np.arange(len(v)) / max(1, len(v) - 1) for p, v in series.items()},
        "relative depth, layer / (L - 1)",
        False,
    )


def _line_figure(
    curves: dict[str, dict[str, tuple]],
    ylabel: str,
    xlabel_same: str,
    path: Path,
    ylim=None,
    hline: dict[str, float] | None = None,
):
    """`line_figure`, saved to path; returns whether the x axis is the layer index."""
    fig, integer = line_figure(curves, ylabel, xlabel_same, ylim, hline)
    _save(fig, path)
    return integer


def line_figure(
    curves: dict[str, dict[str, tuple]],
    ylabel: str,
    xlabel_same: str,
    ylim=None,
    hline: dict[str, float] | None = None,
):
    """curves: {part: {label: (mean, sem)}}; one colour and one marker per part, one line style per label
    (told apart in black and white too). Returns (the figure, whether x is the layer index)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v", "P")
    first = {p: next(iter(c.values()))[0] for p, c in curves.items()}
    xs, xlabel, integer = _depth_axis(first)
    # no pyplot: no global figure state, any backend; constrained layout: no label cut off
    fig = Figure(figsize=FIGSIZE, layout="constrained")
    ax = fig.subplots()
    for k, (part, labelled) in enumerate(curves.items()):
        colour = PART_COLOURS[k % len(PART_COLOURS)]
        for j, (label, (mean, sem)) in enumerate(labelled.items()):
            mean, sem = np.asarray(mean, float), np.asarray(sem, float)
            x = np.arange(len(mean)) if integer else np.arange(len(mean)) / max(1, len(mean) - 1)
            ax.plot(
                x,
                mean,
                styles[j % len(styles)],
                color=colour,
                marker=markers[k % len(markers)],
                ms=4,
                label=f"{part_title(part)}: {label}",
            )
            ax.fill_between(x, mean - sem, mean + sem, color=colour, alpha=0.15, lw=0)
        if hline and part in hline:
            ax.axhline(hline[part], color=colour, lw=0.8, ls=(0, (1, 3)))
    ax.set(xlabel=xlabel_same if integer else xlabel, ylabel=_wrapped(ylabel))
    if ylim:
        ax.set_ylim(*ylim)
    if integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(ncols=2)
    ax.grid(alpha=0.3)
    finish(fig)  # the legend where it covers no data
    return fig, integer


def _bar_figure(bars: dict[str, dict[str, tuple[float, float]]], ylabel: str, path: Path):
    """`bar_figure`, saved to path."""
    _save(bar_figure(bars, ylabel), path)


def bar_figure(bars: dict[str, dict[str, tuple[float, float]]], ylabel: str):
    """bars: {part: {row label: (value, s.e.)}}; grouped horizontal bars (a row's label reads on one line,
    however many rows), one colour (and hatching) per part, ±1 s.e. whiskers; `ylabel` names the values."""
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(label for rows in bars.values() for label in rows))
    height = 1.3 + 0.2 * len(labels) * max(1, len(bars)) ** 0.5
    fig = Figure(figsize=(FIGSIZE[0], max(FIGSIZE[1], height)), layout="constrained")
    hatches = ("", "//", "..", "xx")  # the parts told apart without colour too
    ax = fig.subplots()
    width = 0.8 / max(1, len(bars))
    y = np.arange(len(labels))
    for k, (part, rows) in enumerate(bars.items()):
        values = [rows.get(label, (np.nan, np.nan)) for label in labels]
        ax.barh(
            y + (k - (len(bars) - 1) / 2) * width,
            [v for v, _ in values],
            width,
            xerr=[s for _, s in values],
            capsize=2,
            color=PART_COLOURS[k % len(PART_COLOURS)],
            hatch=hatches[k % len(hatches)],
            edgecolor="white",
            label=part_title(part),
        )
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()  # the first row on top, as in the chapter's table
    ax.set_xlabel(ylabel)
    ax.legend()
    ax.grid(axis="x", alpha=0.3)
    finish(fig)  # the legend where it covers no bar
    return fig


def side_by_side_markdown(root: Path, results: dict[str, dict[str, dict]]) -> tuple[str, list[Path]]:
    out_dir = root / "book" / GENERATED_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    lines = [
        "# Side by side",
        "",
        "Every chapter's main measurement for all the models this book ran, on one figure and one axis, "
        "drawn from the chapters' results files at build time. Colours are the Okabe-Ito palette "
        "{cite:p}`okabe2008cud`, one per model, with a marker (or hatching) of its own. Where the models "
        "have the same number of decoder layers the x axis is the layer index; where depths differ (18 "
        "against 28 layers on the real checkpoints) it is the relative depth layer / (L - 1), so that the "
        "same stage of processing lines up.",
        "",
    ]
    for chapter in chapter_names(root):
        have = {part: chapters[chapter] for part, chapters in results.items() if chapter in chapters}
        title = chapter_title(root, chapter)
        lines += [f"## {title}", ""]
        links = " · ".join(chapter_link(part, chapter) for part in results if chapter in results[part])
        view = chapter_spec(chapter).side_by_side
        drawn = {}
        for part, res in have.items():
            try:
                drawn[part] = view.extract(res) if view else None
            except F.MissingField:
                continue
        drawn = {part: data for part, data in drawn.items() if data and data[0]}
        if not drawn:
            lines += [
                "No figure for this chapter (no results with the fields it needs). "
                f"Chapter pages: {links or '-'}",
                "",
            ]
            continue
        ylabel = next(iter(drawn.values()))[1]
        path = out_dir / f"side-by-side-{chapter}.png"
        if view.kind == "lines":
            hline = None
            if view.reference is not None:
                hline = {p: ref for p, r in have.items() if (ref := view.reference(r))}
            _line_figure({p: d[0] for p, d in drawn.items()}, ylabel, view.xlabel, path, view.ylim, hline)
        else:
            _bar_figure({p: d[0] for p, d in drawn.items()}, ylabel, path)
        written.append(path)
        lines += [
            *side_by_side_figure(path.name, title, ylabel, view, list(drawn)),
            f"Chapter pages: {links}.",
            "",
        ]
    return "\n".join(lines) + "\n", written


def _wrapped(label: str, width: int = 30) -> str:
    """An axis label in lines short enough for the figure's height (a long one would be cut off)."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def side_by_side_figure(image: str, title: str, ylabel: str, view, parts: list[str]) -> list[str]:
    """A side-by-side figure as MyST: numbered on the page, its caption the chapter's note, alt text that
    says what is drawn for whom."""
    names = " and ".join(part_title(p) for p in parts)
    if view.kind == "lines":
        alt = f"Line plot of {ylabel} against {view.xlabel}, one colour and marker per model family ({names})"
    else:
        alt = (
            f"Horizontal bar chart of {ylabel} per patch, one colour and hatching per model family ({names})"
        )
    number, _, name = title.partition(". ")
    caption = f"{name} (chapter {number}). {view.note}" if name else f"{title}. {view.note}"
    return [
        f"```{{figure}} {GENERATED_DIR}/{image}",
        f":alt: {cell(alt)}",
        ":width: 680px",
        "",
        caption,
        "```",
        "",
    ]


# ---------------------------------------------------------------- provenance


def _git(root: Path, *args) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def package_versions(names=PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict[str, str]:
    info = {"machine": platform.machine(), "cores": str(os.cpu_count())}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        info["cpu"] = model.group(1).strip() if model else platform.processor() or "unknown"
    except OSError:
        info["cpu"] = platform.processor() or "unknown"
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["memory"] = f"{kib / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        info["memory"] = "unknown"
    try:
        import torch

        info["gpu"] = (
            ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else "none (torch sees no CUDA device)"
        )
    except ImportError:
        info["gpu"] = "unknown (torch not installed)"
    return info


def model_folder(model: str) -> Path | None:
    """Where a model's weights are on this machine: an embedded organism, a local folder, or the HF cache."""
    named = named_model(model)
    for candidate in (named.folder if named else None, Path(model)):
        if candidate is not None and candidate.is_dir():
            return candidate
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:  # not a hub id, or not in the cache: the page says "not found"
        return None


def weight_hashes(model: str) -> dict[str, str]:
    folder = model_folder(model)
    if folder is None:
        return {}
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    return {p.name: sha256_file(p.resolve()) for p in files}


def _papermill(root: Path, part: str, chapter: str) -> dict:
    path = root / "book" / part / f"{chapter}.ipynb"
    try:
        return json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
    except (OSError, json.JSONDecodeError):
        return {}


def _resolved(value, kind: str) -> str:
    """What 'auto' meant on this machine (vlmlib.models' rule), beside the parameter."""
    if value != "auto":
        return str(value)
    try:
        from ..models import resolve_device, resolve_dtype

        device = resolve_device("auto")
        dtype = str(resolve_dtype("auto", device)).replace("torch.", "")
        return f"auto → {device.type if kind == 'device' else dtype}"
    except Exception:
        return "auto"


def provenance_markdown(root: Path, results: dict[str, dict[str, dict]]) -> str:
    commit = _git(root, "rev-parse", "HEAD") or "unknown (not a git checkout)"
    # Names only: `status --porcelain` lines start with a space that _git's strip() would eat.
    dirty = _git(root, "diff", "--name-only", "HEAD")
    changed = (dirty or "").splitlines()
    tree = (
        "unknown"
        if dirty is None
        else "dirty: " + ", ".join(f"`{c}`" for c in changed)
        if changed
        else "clean (tracked files match the commit)"
    )
    when = _git(root, "log", "-1", "--format=%cI") or "-"
    lines = [
        "# Provenance",
        "",
        "What produced this book, written when it was built.",
        "",
        "## Source",
        "",
        "| | |",
        "|---|---|",
        f"| commit | `{commit}` ({when}) |",
        f"| working tree | {tree} |",
        f"| built | {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')} |",
        "",
        "## Software",
        "",
        "| package | version |",
        "|---|---|",
        f"| Python | {platform.python_version()} ({platform.python_implementation()}, {sys.platform}) |",
    ]
    lines += [f"| {name} | {version} |" for name, version in package_versions().items()]
    lines += ["", "## Hardware", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {cell(v)} |" for k, v in hardware().items()]
    lines += [
        "",
        "## Chapters",
        "",
        "Parameters as the chapter ran them (its defaults, then what the runner passed); wall time from "
        "papermill (first cell to last, model loading included; on the organisms a kernel runs several "
        "chapters one after another, so only a kernel's first chapter includes starting the kernel and "
        "importing torch and transformers). The chapter-specific parameters are listed under the table.",
        "",
        "| part | chapter | device | dtype | dataset | samples | seed | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    models, others = {}, []
    for part, chapters in results.items():
        for chapter, res in chapters.items():
            pm = _papermill(root, part, chapter)
            params = {
                **pm.get("default_parameters", {}),
                **pm.get("parameters", {}),
                **(res.get("params") or {}),
            }
            models.setdefault(res.get("model", "?"), set()).add(part)
            shown = {"model", "results", "device", "dtype", "dataset", "n_samples", "seed"}
            other = ", ".join(f"`{k}={v!r}`" for k, v in params.items() if k not in shown)
            duration = pm.get("duration")
            samples = res.get("n_samples_used", params.get("n_samples", "-"))
            lines.append(
                f"| {cell(part_title(part))} | {chapter_link(part, chapter, text=chapter[:2])} | "
                f"{cell(res.get('device') or _resolved(params.get('device', 'auto'), 'device'))} | "
                f"{cell(res.get('dtype') or _resolved(params.get('dtype', 'auto'), 'dtype'))} | "
                f"{cell(display_name(params.get('dataset', '-')))} | {samples} | {params.get('seed', '-')} | "
                f"{f'{duration:.1f} s' if isinstance(duration, (int, float)) else '-'} |"
            )
            if other:
                others.append(
                    f"- {part_title(part)}, {chapter_link(part, chapter, text=chapter)} "
                    f"(`{display_name(res.get('model', '-'))}`): {other}"
                )
    lines += ["", *others]
    for part in results:  # the training-seed replicates the chapters also ran on (vlmlib.book.seeds)
        for folder in sorted((root / "book" / part / seeds.SEEDS_FOLDER).glob("*")):
            if folder.is_dir() and any(folder.glob("[0-9][0-9]_*.json")):
                models.setdefault(folder.name, set()).add(f"{part}, training-seed replicate")
    lines += ["", "## Model weights", "", "SHA-256 of each weight file, as loaded.", ""]
    for model, parts in models.items():
        hashes = weight_hashes(model)
        where = f"`{display_name(model)}` ({', '.join(sorted(parts))})"
        if not hashes:
            lines.append(f"- {where}: not found on this machine")
        for name, digest in hashes.items():
            lines.append(f"- {where}, `{name}`: `{digest}`")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- entry point


def generate_pages(root: Path, parts: dict[str, str]) -> list[Path]:
    """Write the generated pages under root/book/; `parts` maps book part -> model name."""
    root = Path(root)
    results = load_results(root, parts)
    book = root / "book"
    by_seed = {part: seeds.seed_results(book / part) for part in parts}
    written = [_write(book / "what-holds.md", what_holds_markdown(results, by_seed))]
    side, figures = side_by_side_markdown(root, results)
    written.append(_write(book / "side-by-side.md", side))
    written.append(_write(book / "provenance.md", provenance_markdown(root, results)))
    per_part = decided_findings(results, by_seed)[0]
    written.append(_write(book / GENERATED_DIR / "findings.md", findings_fragment(root, per_part, results)))
    return written + figures
