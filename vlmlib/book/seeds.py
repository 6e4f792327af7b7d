"""Training-seed replicates: the same organism recipe trained with other seeds, and the spread of every
chapter's headline numbers across them.

A finding of one trained model may be an accident of its seed. `scripts/train_replicate.sh FAMILY SEED`
trains `<organism>-seed<SEED>` with the shipped recipe (the shipped organism is seed 0); the runner runs
every chapter on each replicate with the same parameters and samples, into
``book/<part>/seeds/<replicate>/`` (not pages of the book: only their results are read), and the build
puts a table "Across training seeds" on each chapter page and a column on What holds. The numbers are
the claims' headlines (`vlmlib.paper.claims`, ``headlines``): each seed's value with its standard error
across samples, and the mean and standard deviation across seeds.

Only replicate results that match the page's run are shown beside it: the part's run manifest must record
both runs with the same parameters (the model aside), code and dataset. A replicate's results from
another run (the pages ran again with `--no-replicates` and other parameters, or after a code change) are
left out, and the page says which, from which run and why (`SeedResults.left_out`, `left_out_text`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..models import named_model, named_models
from ..paper import claims as F
from ..paper.chapters import chapter_spec
from ..paper.format import cell, estimate
from ..util import atomic_write
from .manifest import read_manifest
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


class SeedResults(dict):
    """{training seed: {chapter: results}}, and in `left_out` what is not among them and why: {chapter:
    {seed: (replicate model, why)}} for the replicate results that do not match the page's run."""

    def __init__(self, *args, left_out: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.left_out: dict[str, dict[int, tuple[str, str]]] = left_out or {}


def seed_results(part_dir: Path) -> SeedResults:
    """{training seed: {chapter: results}} of a built part: seed 0 from the part's own results files, the
    replicates from its seeds/ folder, each only where its run matches the page's (`run_mismatch`, from
    the part's run manifest); the others are in `left_out`. Empty when the part has no replicates (a
    user's checkpoint) or none matches (`left_out` then says why)."""
    part_dir = Path(part_dir)
    replicate_dirs = sorted(p for p in (part_dir / SEEDS_FOLDER).glob("*") if p.is_dir())
    if not replicate_dirs:
        return SeedResults()
    entries = read_manifest(part_dir).get("chapters", {})
    left_out: dict[str, dict[int, tuple[str, str]]] = {}
    out = {}
    pages = read_results(part_dir)
    if pages:
        out[0] = pages
    for folder in replicate_dirs:
        seed, found = training_seed(folder.name), {}
        for path in sorted(folder.glob("[0-9][0-9]_*.json")):
            chapter = path.stem
            try:
                results = json.loads(path.read_text())
                why = None if isinstance(results, dict) else "not a JSON object"
            except (OSError, ValueError) as err:
                why = f"unreadable ({err})"
            if why is None and chapter in pages:
                why = run_mismatch(
                    entries.get(chapter),
                    entries.get(f"{SEEDS_FOLDER}/{folder.name}/{chapter}"),
                    _params(pages[chapter]),
                    _params(results),
                )
            if why is None:
                found[chapter] = results
            elif chapter in pages:
                left_out.setdefault(chapter, {})[seed] = (folder.name, why)
        if found:
            out[seed] = found
    return SeedResults(out if len(out) > 1 else {}, left_out=left_out)


_UNSET = object()


def _params(results: dict) -> dict | None:
    params = results.get("params") if isinstance(results, dict) else None
    return params if isinstance(params, dict) else None


def _shown(parameters: dict, resolved: dict | None, name: str) -> str:
    """A parameter's value as a run had it: as passed, else as the chapter resolved it (its results'
    "params"), else its default."""
    value = parameters.get(name, (resolved or {}).get(name, _UNSET))
    if value is _UNSET:
        return "the chapter's default"
    return json.dumps(value) if isinstance(value, str) else str(value)


def run_mismatch(
    page: dict | None, replicate: dict | None, page_params: dict | None = None, replicate_params=None
) -> str | None:
    """Why a replicate's run (its run-manifest entry) does not match the page's, in words, or None when
    it does: the same parameters but the model, the same code and the same dataset. `page_params`,
    `replicate_params`: the parameters as each chapter resolved them (its results' "params"), to name a
    default's value."""
    if not (page or {}).get("parameters") or not (page or {}).get("fingerprint"):
        return "not comparable: run-manifest.json has no record of this page's run"
    if not (replicate or {}).get("parameters") or not (replicate or {}).get("fingerprint"):
        return "without a record in run-manifest.json of the run they come from"
    theirs = {k: v for k, v in replicate["parameters"].items() if k != "model"}
    ours = {k: v for k, v in page["parameters"].items() if k != "model"}
    differs = []
    if theirs != ours:
        changed = [
            f"{k}={_shown(theirs, replicate_params, k)} against "
            f"{_shown(ours, page_params, k)} in the page's run"
            for k in sorted(set(theirs) | set(ours))
            if theirs.get(k, _UNSET) != ours.get(k, _UNSET)
        ]
        differs.append(f"other parameters ({', '.join(changed)})")
    if replicate["fingerprint"].get("code") != page["fingerprint"].get("code"):
        differs.append("other code (the chapter or vlmlib changed since)")
    if replicate["fingerprint"].get("dataset") != page["fingerprint"].get("dataset"):
        differs.append("other data (the dataset folder changed since)")
    if not differs:
        return None
    older = str(replicate.get("finished") or "") < str(page.get("finished") or "")
    run = replicate.get("run_id")
    which = f"{'an older' if older else 'another'} run" + (f" ({run})" if run else "")
    return f"from {which} with {' and '.join(differs)}"


def left_out_text(left_out: dict[int, tuple[str, str]], chapter: str | None = None) -> str:
    """One paragraph for a page: which seeds' results of a chapter are not shown, why, and what to do
    (`chapter`: its name, for a page other than the chapter's own)."""
    by_reason: dict[str, list[tuple[int, str]]] = {}
    for seed, (model, why) in sorted(left_out.items()):
        by_reason.setdefault(why, []).append((seed, model))
    sentences = []
    for why, found in by_reason.items():
        numbers = [str(s) for s, _ in found]
        who = (
            f"seed {numbers[0]}"
            if len(numbers) == 1
            else f"seeds {', '.join(numbers[:-1])} and {numbers[-1]}"
        )
        models = ", ".join(f"`{m}`" for _, m in found)
        sentences.append(f"The results of {who} ({models}) are {why} and are not shown.")
    return " ".join(
        [
            *sentences,
            f"Run {'this chapter' if chapter is None else f'chapter {chapter}'} again with its "
            "training-seed replicates (without `--no-replicates`) to include them.",
        ]
    )


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
    """The "Across training seeds" section of a chapter page, or None when no replicate ran it. Replicate
    results left out of `by_seed` (`SeedResults.left_out`: from a run that does not match the page's) are
    named under the heading, never shown."""
    left_out = getattr(by_seed, "left_out", {}).get(chapter, {})
    claims = list(chapter_spec(chapter).claims)
    ran = [s for s in sorted(by_seed) if chapter in by_seed[s]]
    if not claims or ((len(ran) < 2 or 0 not in ran) and not left_out):
        return None
    if len(ran) < 2 or 0 not in ran:  # every replicate's results of this chapter are left out
        return "\n".join(["## Across training seeds", "", left_out_text(left_out)]) + "\n"
    by_seed = {s: by_seed[s] for s in ran}
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
    if left_out:
        lines += [left_out_text(left_out), ""]
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
