"""What a part's pages come from: fingerprints of what a chapter's numbers depend on, the run manifest,
and the lock that lets one run at a time write into an output folder.

`run-manifest.json` in each part folder records which run each chapter comes from (run id, time,
parameters, model, fingerprint) and whether the part mixes runs. A chapter whose fingerprint
(parameters + chapter and package code + model + dataset) matches its manifest entry is not run again
unless forced. One run per output folder at a time: a lock file holds the pid; a dead pid's lock is
taken over.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from ..models import model_fingerprint
from ..util import files_digest, package_files
from .plan import DEFAULT_MODELS, UsageError, book_parts
from .results import results_problem

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MANIFEST = "run-manifest.json"


def package_code_files() -> list[Path]:
    """Every file of every subpackage of vlmlib a chapter may run (code, the paper's values, templates),
    not the organisms' weights (the model fingerprint covers those): a moved or edited module changes it."""
    weights = PACKAGE_DIR / "organisms" / "weights"
    return [
        p for p in package_files(PACKAGE_DIR, (".py", ".json", ".jinja", ".txt")) if weights not in p.parents
    ]


def code_fingerprint(source: Path) -> str:
    """Hash of the chapter's source and of every file of the package it may call (`package_code_files`)."""
    source = Path(source).resolve()
    return files_digest([source, *package_code_files()], root=Path(os.path.commonpath([source, PACKAGE_DIR])))


def dataset_fingerprint(dataset) -> str | None:
    """A folder dataset's metadata.jsonl and image list (name, size, mtime); None for generated ones."""
    if not isinstance(dataset, str) or not Path(dataset).is_dir():
        return None
    entries = sorted(
        (str(p.relative_to(dataset)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in Path(dataset).rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def fingerprint(source: Path, model: str, parameters: dict) -> dict:
    """What a chapter's result depends on; `key` changes when any of it does. A cache of intermediate
    results (e.g. one observation pass shared by chapters) can key on the same parts."""
    parts = {
        "parameters": parameters,
        "code": code_fingerprint(source),
        "model": model_fingerprint(model),
        "dataset": dataset_fingerprint(parameters.get("dataset")),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {**parts, "key": key}


def read_manifest(part_dir: Path) -> dict:
    """A part folder's run manifest: {"chapters": {stem: {run_id, finished, model, parameters, fingerprint}},
    "runs": [run ids], "mixed": whether the pages come from more than one run}."""
    try:
        return json.loads((Path(part_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"chapters": {}}


def published_problem(part_dir: Path, key: str, chapter: str) -> str | None:
    """Why a chapter whose fingerprint matches its manifest entry cannot be skipped, or None: its notebook
    `<key>.ipynb` must be there and parse as a notebook, and its results file `<key>.json` beside it be
    whole (`vlmlib.book.results.results_problem`)."""
    part_dir = Path(part_dir)
    notebook = part_dir / f"{key}.ipynb"
    if not notebook.is_file():
        return f"its notebook {notebook.name} is missing"
    try:
        cells = json.loads(notebook.read_text()).get("cells")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
        return f"its notebook {notebook.name} is unreadable ({err})"
    if not isinstance(cells, list):
        return f"its notebook {notebook.name} is not a notebook (no cells)"
    return results_problem(part_dir / f"{key}.json", chapter)


def _pages(manifest: dict) -> dict:
    """The manifest's entries for the part's pages, without its training-seed replicates' runs."""
    return {key: e for key, e in manifest.get("chapters", {}).items() if "/" not in key}


def describe_manifest(manifest: dict) -> str | None:
    """One sentence for a page when a part's chapters come from different runs (or models), else None."""
    chapters_ = _pages(manifest)
    runs: dict[str, list[str]] = {}
    for stem, entry in sorted(chapters_.items()):
        runs.setdefault(entry.get("run_id") or "an unrecorded run", []).append(stem)
    models = {str(e.get("model")) for e in chapters_.values() if e.get("model")}
    if len(runs) <= 1 and len(models) <= 1:
        return None
    parts = [f"{', '.join(stems)} from run {run}" for run, stems in runs.items()]
    text = "These pages come from different runs: " + "; ".join(parts) + "."
    if len(models) > 1:
        text += f" They ran on different models: {', '.join(sorted(models))}."
    return text


def built_parts(out: Path) -> dict[str, str]:
    """{part: model} of the parts that have run into `out`, the model of each part's latest run."""
    parts = {}
    for part in book_parts():  # a family's part without a default model is there once it has run
        manifest = read_manifest(Path(out) / part)
        latest = [e for e in _pages(manifest).values() if e.get("run_id") == manifest.get("latest_run")]
        if latest:
            parts[part] = str(latest[0].get("model"))
        elif (Path(out) / part).is_dir() and part in DEFAULT_MODELS:
            parts[part] = DEFAULT_MODELS[part]
    return parts


class RunLock:
    """One run per output folder: a file created exclusively, holding the pid. A lock whose pid is dead
    (a run killed with SIGKILL) is taken over."""

    def __init__(self, path: Path, label: str = "this book"):
        self.path, self.label = path, label
        self.held = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                    pid = int(holder["pid"])
                except (OSError, ValueError, KeyError, TypeError):
                    holder, pid = {}, -1
                if pid > 0 and pid_alive(pid):
                    # the folder the other run writes (runs into several folders of one project share
                    # the project's lock): named as that run recorded it
                    writing = holder.get("writing", "this project's book")
                    also = (
                        ""
                        if writing == self.label
                        else f" (one run at a time per project: {self.label} waits)"
                    )
                    raise UsageError(
                        f"another run (pid {pid}, started {holder.get('started', '?')}) is writing into "
                        f"{writing}{also}; wait for it to finish (lock: {self.path})"
                    ) from None
                self.path.unlink(missing_ok=True)  # its run is dead: take over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "started": now(), "writing": self.label}, f)
            self.held = True
            return self
        raise UsageError(f"could not take the run lock {self.path}; remove it if no run is going on")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
