"""Reading what the chapters wrote: results files by chapter, by part."""

from __future__ import annotations

import json
from pathlib import Path


def read_results(folder: Path) -> dict[str, dict]:
    """{chapter: results} from a folder's <chapter>.json files (a chapter that did not run is absent)."""
    found = {}
    for path in sorted(Path(folder).glob("[0-9][0-9]_*.json")):
        try:
            found[path.stem] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable results file ({err}); re-run that chapter") from err
    return found


def load_results(root: Path, parts) -> dict[str, dict[str, dict]]:
    """{part: {chapter: results}} from book/<part>/<chapter>.json."""
    return {part: read_results(root / "book" / part) for part in parts}
