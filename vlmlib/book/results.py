"""Reading what the chapters wrote: results files by chapter, by part, and whether one is whole."""

from __future__ import annotations

import json
from pathlib import Path

# What every results file of one of the book's chapters holds (vlmlib.paper.run: `run_info` and `finish`):
# a results file without them was cut short or written by something else.
RESULT_FIELDS = ("chapter", "model", "params", "findings")


def read_results(folder: Path) -> dict[str, dict]:
    """{chapter: results} from a folder's <chapter>.json files (a chapter that did not run is absent)."""
    found = {}
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable results file ({err}); re-run that chapter") from err
    return found


def results_problem(path: Path, chapter: str | None = None) -> str | None:
    """Why the results file at `path` cannot stand for its chapter's run, or None when it can: it must be
    there, parse as a JSON object and, for a chapter with a spec (the book's, or one registered), carry
    `RESULT_FIELDS` with its own chapter's name. `chapter`: the chapter's name (default: the file's
    stem)."""
    from ..paper.chapters import chapter_specs

    path = Path(path)
    chapter = chapter or path.stem
    if not path.is_file():
        return f"its results file {path.name} is missing"
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its results file {path.name} is unreadable ({err})"
    if not isinstance(results, dict):
        return f"its results file {path.name} is not a JSON object"
    if chapter in chapter_specs():
        missing = [name for name in RESULT_FIELDS if name not in results]
        if missing:
            return f"its results file {path.name} is incomplete (no {', '.join(missing)})"
        if results["chapter"] != chapter:
            return f"its results file {path.name} is chapter {results['chapter']!r}'s"
        if not isinstance(results["findings"], list) or not isinstance(results["params"], dict):
            return f"its results file {path.name} is malformed (findings or params of the wrong type)"
    return None


def load_results(root: Path, parts) -> dict[str, dict[str, dict]]:
    """{part: {chapter: results}} from book/<part>/<chapter>.json."""
    return {part: read_results(root / "book" / part) for part in parts}
