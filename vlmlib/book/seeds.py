"""Training-seed replicates: the same organism recipe trained with other seeds, and the spread of every
chapter's headline numbers across them.

A finding of one trained model may be an accident of its seed. `scripts/train_replicate.sh FAMILY SEED`
trains `<organism>-seed<SEED>` with the shipped recipe (the shipped organism is seed 0); the runner runs
every chapter on each replicate with the same parameters and samples, into
``book/<part>/seeds/<replicate>/`` (not pages of the book: only their results are read), and the build
puts a table "Across training seeds" on each chapter page and a column on What holds. The numbers are
the claims' headlines (`vlmlib.paper.claims`, ``headlines``): each seed's value with its standard error
across samples, and the mean and standard deviation across seeds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..models import named_model, named_models
from ..paper import claims as F
from ..paper.chapters import chapter_spec
from ..paper.format import cell, estimate
from ..util import atomic_write
from .results import read_results

SEEDS_FOLDER = "seeds"  # book/<part>/seeds/<replicate model>/<chapter>.json
SECTION_TAG = "vlmlib-seeds"  # the generated section of a chapter page
_REPLICATE = re.compile(r"^(?P<base>.+)-seed(?P<seed>\d+)$")


def replicates(model: str) -> list[str]:
    """The finished training-seed replicates of a named model (its catalogue says which), by seed; [] for
    any other model (a user's checkpoint, a random-weight model, a replicate itself)."""
    named = named_model(model)
    if named is None or named.replicate_of is not None:
        return []
    found = [m for m in named_models().values() if m.replicate_of == model]
    return [m.name for m in sorted(found, key=lambda m: m.seed)]


def training_seed(model: str) -> int:
    """The training seed of an embedded organism: N for '<organism>-seed<N>', else 0 (the shipped one)."""
    match = _REPLICATE.match(Path(str(model)).name)
    return int(match["seed"]) if match else 0


def seed_results(part_dir: Path) -> dict[int, dict[str, dict]]:
    """{training seed: {chapter: results}} of a built part: seed 0 from the part's own results files, the
    replicates from its seeds/ folder. {} when the part has no replicates (a user's checkpoint)."""
    part_dir = Path(part_dir)
    replicate_dirs = sorted(p for p in (part_dir / SEEDS_FOLDER).glob("*") if p.is_dir())
    if not replicate_dirs:
        return {}
    out = {}
    for folder, seed in [(part_dir, 0), *((d, training_seed(d.name)) for d in replicate_dirs)]:
        found = read_results(folder)
        if found:
            out[seed] = found
    return out if len(out) > 1 else {}


def claim_across_seeds(claim: F.Claim, by_seed: dict[int, dict[str, dict]], family: str = "") -> dict:
    """One claim on every seed: {seeds, findings {seed: finding}, headlines [{label, values {seed: (v, se)},
    mean, sd}], verdicts {verdict: count}}. Headlines are matched by label (seed 0's order first)."""
    seeds = sorted(by_seed)
    found = {s: F.evaluate(claim, by_seed[s].get(claim.chapter), family) for s in seeds}
    labels = []
    for s in seeds:
        labels += [h["label"] for h in found[s]["headlines"] if h["label"] not in labels]
    headlines = []
    for label in labels:
        values = {}
        for s in seeds:
            h = next((h for h in found[s]["headlines"] if h["label"] == label), None)
            if h is not None and h["value"] is not None:
                values[s] = (h["value"], h["se"])
        numbers = [v for v, _ in values.values()]
        mean = sum(numbers) / len(numbers) if numbers else None
        sd = (
            math.sqrt(sum((x - mean) ** 2 for x in numbers) / (len(numbers) - 1))
            if len(numbers) > 1
            else None
        )
        headlines.append({"label": label, "values": values, "mean": mean, "sd": sd})
    verdicts = {v: sum(f["verdict"] == v for f in found.values()) for v in F.VERDICTS}
    return {"seeds": seeds, "findings": found, "headlines": headlines, "verdicts": verdicts}


def verdict_summary(across: dict) -> str:
    """'holds in 2 of 3 seeds, unresolved in 1' ('the same in all 3' when they agree)."""
    n = len(across["seeds"])
    counts = [(v, c) for v, c in across["verdicts"].items() if c]
    if len(counts) == 1:
        return f"{counts[0][0]} in both seeds" if n == 2 else f"{counts[0][0]} in all {n} seeds"
    counts.sort(key=lambda vc: -vc[1])
    return ", ".join(f"{v} in {c}" if i else f"{v} in {c} of {n} seeds" for i, (v, c) in enumerate(counts))


def seeds_table(across: dict, first_label: str = "seed 0") -> list[str]:
    """Markdown table rows: one per headline and one for the verdict, a column per seed, then the spread."""
    seeds = across["seeds"]
    names = [first_label if s == 0 else f"seed {s}" for s in seeds]
    lines = [
        "| | " + " | ".join(names) + " | across seeds: mean (s.d.) |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for h in across["headlines"]:
        cells = [estimate(*h["values"][s]) if s in h["values"] else "-" for s in seeds]
        spread = (
            "-"
            if h["mean"] is None
            else f"{estimate(h['mean'])} ({h['sd']:.2g})"
            if h["sd"] is not None
            else estimate(h["mean"])
        )
        lines.append(f"| {cell(h['label'])} | " + " | ".join(cells) + f" | {spread} |")
    verdicts = [across["findings"][s]["verdict"] for s in seeds]
    lines.append("| **verdict** | " + " | ".join(verdicts) + f" | {verdict_summary(across)} |")
    return lines


def chapter_section(chapter: str, by_seed: dict[int, dict[str, dict]], family: str = "") -> str | None:
    """The "Across training seeds" section of a chapter page, or None when no replicate ran it."""
    ran = [s for s in sorted(by_seed) if chapter in by_seed[s]]
    if len(ran) < 2 or 0 not in ran:
        return None
    by_seed = {s: by_seed[s] for s in ran}
    claims = list(chapter_spec(chapter).claims)
    if not claims:
        return None
    models = ", ".join(f"`{by_seed[s][chapter].get('model', '?')}`" for s in ran if s)
    lines = [
        "## Across training seeds",
        "",
        f"This chapter ran again, with the same parameters and samples, on the organisms trained by the same "
        f"recipe with other seeds ({models}; `scripts/train_replicate.sh`, see the model card). Each cell "
        "is a headline number of this chapter ± its standard error across samples; the last column is "
        "its mean and standard deviation across the training seeds. A verdict that changes between "
        "seeds is a property of one trained model, not of the recipe.",
        "",
    ]
    for claim in claims:
        across = claim_across_seeds(claim, by_seed, family)
        lines += (
            [f"**{claim.title}** ({claim.section})", ""] + seeds_table(across, "seed 0 (this page)") + [""]
        )
    return "\n".join(lines).rstrip() + "\n"


def set_seed_section(path: Path, text: str | None) -> None:
    """Put the generated section before the chapter's exercises (or at its end); None takes it away.
    Idempotent; rewritten atomically only when it changes."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if SECTION_TAG not in c.metadata.get("tags", [])]
    if text:
        section = nbformat.v4.new_markdown_cell(text)
        section.metadata["tags"] = [SECTION_TAG]
        where = next(
            (
                i
                for i, c in enumerate(cells)
                if c.cell_type == "markdown" and c.source.lstrip().startswith("## Exercises")
            ),
            len(cells),
        )
        cells.insert(where, section)
    if [c.source for c in cells] == [c.source for c in nb.cells]:
        return
    nb.cells = cells
    atomic_write(path, lambda f: nbformat.write(nb, f))
