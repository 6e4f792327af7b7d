"""The book runner: Jupytext chapter sources -> papermill-executed notebooks per book part -> HTML.

The command line is `python -m vlmlib` (vlmlib/book/cli.py); `python -m vlmlib.book [options]` is kept
as an alias of `python -m vlmlib book [options]`. This module does the work:

- `make_plan` checks everything before anything runs: part names, `PART=MODEL`, the model's family
  against the part's (read from config.json, no weights loaded), parameter names against each chapter's
  parameters cell and values against the defaults' types. User paths are made absolute from the user's
  current directory, because each chapter's kernel runs in its output folder.
- `run_plan` executes a part's chapters into a staging folder under `<root>/_build/runner/` (which the
  book never reads) and swaps the part's folder in only when every chapter asked for succeeded; a subset
  run is merged with the part's other chapters. `run-manifest.json` in each part folder records which
  run each chapter comes from (run id, time, parameters, model, fingerprint) and whether the part mixes
  runs. A chapter whose fingerprint (parameters + chapter and library code + model + dataset) matches
  its manifest entry is not run again unless `force`. One run per output folder at a time (a lock
  file holding the pid; a dead pid's lock is taken over); interrupted runs leave only `_build/` files,
  removed by the next run.
- Chapters run `jobs` at a time (forked workers). On the embedded organisms each worker runs its
  chapters in one kernel (`ChapterKernel`), the namespace cleared before each; elsewhere, and with
  `--kernel-per-chapter`, every chapter gets a fresh kernel.
"""

from __future__ import annotations

import ast
import datetime as _dt
import difflib
import functools
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..families import UnsupportedModelError, families, family_of_model_type, supported_model_types
from ..models import embedded_names, model_fingerprint, named_model
from ..organisms import DEFAULT_ORGANISMS
from ..paper.run import MINIMUMS
from ..params import ParameterError, coerce
from ..util import files_digest, package_files, sha256_file, write_json
from .notebooks import prepare_notebook_for_book, set_page_note
from .pages import generate_pages, part_title
from .seeds import SEEDS_FOLDER, chapter_section, replicates, seed_results, set_seed_section

# The project this runner belongs to (_config.yml, _toc.yml, book/, notebooks/): the checkout holding the
# package; `--root` names another.
ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# Book part (folder under book/, a part of _toc.yml) -> the model its chapters run on by default.
# A part's name is its model family's name (vlmlib.families): the family decides what a part may run.
DEFAULT_MODELS = dict(DEFAULT_ORGANISMS)
MANIFEST = "run-manifest.json"
# Parameters the runner sets itself, and the option a user sets them with instead.
RUNNER_PARAMETERS = {"model": "--model PART=MODEL", "results": "--out DIR (results are written next to the pages)"}
# Parameters whose value is a user path unless it is one of the named choices.
PATH_PARAMETERS = {"dataset": ("shapes", "pixelprose")}
# The kernel's environment: inline figures (a headless MPLBACKEND=Agg would drop them), no progress bars
# in the notebooks (tqdm.auto's "IProgress not found" warning), no network.
# HF_HUB_OFFLINE is the user's, 1 (no network) when unset. tqdm.auto, imported by transformers and datasets,
# warns "IProgress not found" in any kernel without ipywidgets, whatever TQDM_DISABLE says: filter that one
# message (added to the user's PYTHONWARNINGS).
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TQDM_DISABLE": "1"}
KERNEL_WARNING_FILTERS = ("ignore:IProgress not found",)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "", "false", "False")


class UsageError(Exception):
    """Bad arguments, found before anything ran; the message says what to type instead."""


class ChapterFailed(Exception):
    """A chapter raised; its partial notebook was kept at `notebook` for debugging."""

    def __init__(self, part: str, chapter: str, notebook: Path | None, error: str):
        super().__init__(f"{part}/{chapter}: {error}")
        self.part, self.chapter, self.notebook, self.error = part, chapter, notebook, error


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


# ---------------------------------------------------------------- chapters and their parameters


def chapters(root: Path = ROOT, selection: list[str] | None = None) -> list[Path]:
    """Chapter sources notebooks/NN_name.py, optionally only those whose name starts with a selection."""
    every = sorted((Path(root) / "notebooks").glob("[0-9][0-9]_*.py"))
    if not every:
        raise UsageError(f"{Path(root).resolve()} has no chapters (notebooks/NN_name.py): is --root the project folder?")
    found = [p for p in every if not selection or any(p.stem.startswith(s) for s in selection)]
    unmatched = [s for s in selection or [] if not any(p.stem.startswith(s) for p in every)]
    if unmatched or not found:
        raise UsageError(f"no chapter matches {unmatched or selection}; chapters: {', '.join(p.stem for p in every)}")
    return found


@dataclass
class Parameter:
    name: str
    default: object
    types: tuple  # accepted types; () means any
    comment: str = ""


_ANNOTATION_TYPES = {"int": int, "float": float, "str": str, "list": list, "dict": dict, "bool": bool, "None": type(None)}


def _annotation_types(node) -> tuple:
    names = [n.id if isinstance(n, ast.Name) else "None" for n in ast.walk(node)
             if isinstance(n, ast.Name) or (isinstance(n, ast.Constant) and n.value is None)]
    return tuple(_ANNOTATION_TYPES[n] for n in names if n in _ANNOTATION_TYPES)


def chapter_parameters(source: Path) -> dict[str, Parameter]:
    """The parameters cell of a Jupytext chapter: name -> default, accepted types (the default's, or an
    annotation's such as `groups: str | dict = "scaled"`), and the comment that explains it."""
    text = Path(source).read_text()
    lines, cell, inside = text.splitlines(), [], False
    for line in lines:
        if line.startswith("# %%"):
            if inside:
                break
            inside = "parameters" in line and "tags=" in line
            continue
        if inside:
            cell.append(line)
    if not cell:
        raise UsageError(f"{source} has no parameters cell (# %% tags=[\"parameters\"])")
    found = {}
    for node in ast.parse("\n".join(cell)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value, annotation = node.targets[0].id, node.value, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value, annotation = node.target.id, node.value, node.annotation
        else:
            continue
        default = ast.literal_eval(value)
        if annotation is not None:
            types = _annotation_types(annotation)
        elif default is None:
            types = ()
        elif isinstance(default, bool):
            types = (bool,)
        elif isinstance(default, float):
            types = (float, int)
        else:
            types = (type(default),)
        rest = cell[node.end_lineno - 1][node.end_col_offset:]
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        found[target] = Parameter(target, default, types, comment)
    return found


# ---------------------------------------------------------------- models and families


def model_family(model: str) -> str | None:
    """The family of a model name/folder/hub id from its config.json's model_type, without loading weights;
    None when it cannot be told before loading (a hub id not in the local cache)."""
    named = named_model(model)
    if named is not None:  # a named model (an organism, a random-weight test model): its catalogue knows
        return named.family
    config = None
    if Path(model).is_dir():
        config = Path(model) / "config.json"
        if not config.is_file():
            raise UsageError(f"model folder {model} has no config.json: pass a folder written by save_pretrained")
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
            config = Path(cached) if isinstance(cached, str) else None
        except Exception:
            config = None
        if config is None:
            return None
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {config}: {e}") from None
    family = family_of_model_type(model_type)
    if family is not None:
        return family.name
    raise UsageError(f"model {model}: model_type {model_type!r} in {config} is not a supported family "
                     f"({supported_model_types()})")


def resolve_model(model: str, cwd: Path) -> str:
    """An embedded name stays a name, an existing folder becomes absolute (from the user's directory),
    anything else must look like a hub id."""
    if named_model(model) is not None:
        return model
    path = Path(model).expanduser()
    path = path if path.is_absolute() else cwd / path
    if path.is_dir():
        return os.path.abspath(path)
    org, sep, name = model.partition("/")
    hub_id = bool(sep and org and name and "/" not in name and not model.startswith((".", "~")))
    if not hub_id:
        raise UsageError(f"model {model!r}: no such folder (tried {os.path.abspath(path)}), not an embedded model "
                         f"({', '.join(embedded_names())}), and not a hub id of the form 'org/name'")
    return model  # a hub id


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    root: Path  # project folder (notebooks/, _toc.yml)
    out: Path  # where part folders go (default root/book)
    parts: dict[str, str]  # part -> model
    chapters: list[Path]
    parameters: dict[str, dict]  # chapter stem -> parameters it receives (model and results excluded)
    force: bool = False
    replicates: bool = True  # also run each chapter on the part's training-seed replicates (vlmlib.book.seeds)
    jobs: int = 1  # chapters executed at once (each in its own kernel, the CPU cores shared among them)
    # Chapters run one after another in a kernel (ChapterKernel) rather than a fresh kernel each; the
    # default on the embedded organisms, where starting a kernel and importing cost more than the chapter.
    shared_kernels: bool = False

    @property
    def build_dir(self) -> Path:
        """Runner state (lock, staging) and failed notebooks: under _build/ (never a book source) when the
        output folder is inside the project, else a hidden folder beside the parts."""
        inside = self.out == self.root or self.root in self.out.parents
        return self.root / "_build" if inside else self.out / ".vlmlib"


def parse_model_options(items: list[str], known_parts=None) -> dict[str, str]:
    """`PART=MODEL` items -> {part: model}, checked against the known parts."""
    known = list(known_parts or DEFAULT_MODELS)
    models = {}
    for item in items:
        part, sep, model = item.partition("=")
        if not sep or not part or not model:
            raise UsageError(f"--model {item!r}: write PART=MODEL, e.g. --model paligemma=path/to/checkpoint "
                             f"(parts: {', '.join(known)})")
        if part not in known:
            raise UsageError(f"--model {item!r}: unknown part {part!r}{_did_you_mean(part, known)}; parts: {', '.join(known)}")
        models[part] = model
    return models


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_plan(root: Path | str = ROOT, out: Path | str | None = None, chapter_selection: list[str] | None = None,
              only: list[str] | None = None, models: list[str] | None = None,
              parameters: list[tuple[str, str]] | None = None, force: bool = False, cwd: Path | None = None,
              replicates: bool = True, jobs: int | str = 1, kernel_per_chapter: bool = False) -> Plan:
    """Check every argument and resolve every path; raise UsageError before anything runs."""
    cwd = Path(cwd or os.getcwd())
    root = Path(os.path.abspath(cwd / Path(root).expanduser()))
    if not (root / "notebooks").is_dir():
        raise UsageError(f"--root {root} is not the project folder (no notebooks/ in it)")
    out = Path(os.path.abspath(cwd / Path(out).expanduser())) if out else root / "book"
    sources = chapters(root, chapter_selection)

    parts = dict(DEFAULT_MODELS)
    chosen = parse_model_options(models or [])
    if only:
        unknown = [p for p in only if p not in DEFAULT_MODELS]
        if unknown:
            raise UsageError(f"--only {' '.join(unknown)}: unknown part{'s' if len(unknown) > 1 else ''}"
                             f"{_did_you_mean(unknown[0], DEFAULT_MODELS)}; parts: {', '.join(DEFAULT_MODELS)}")
        parts = {p: parts[p] for p in only}
    outside = [p for p in chosen if p not in parts]
    if outside:
        raise UsageError(f"--model {outside[0]}=...: part {outside[0]!r} is not among --only {' '.join(only or [])}")
    parts.update(chosen)
    for part, model in parts.items():
        parts[part] = model = resolve_model(model, cwd)
        family = model_family(model)
        if family is not None and family != part:
            raise UsageError(f"--model {part}={model}: that is a {family} model, and part {part!r} is the {part} "
                             f"family's; use --model {family}={model}")
        if family is None and offline():
            raise UsageError(f"--model {part}={model}: not an embedded model, not a local folder, and not in the "
                             "local Hugging Face cache. Download it where there is network (`hf download "
                             f"{model}`) and pass the folder, or allow downloads with HF_HUB_OFFLINE=0")

    per_chapter = {s.stem: chapter_parameters(s) for s in sources}
    taken = {name for params in per_chapter.values() for name in params}
    values: dict[str, dict] = {s.stem: {} for s in sources}
    for name, text in parameters or []:
        if name in RUNNER_PARAMETERS:
            raise UsageError(f"-p {name}: the runner sets {name!r} itself; use {RUNNER_PARAMETERS[name]}")
        if name not in taken:
            every = {n for s in chapters(root) for n in chapter_parameters(s)}
            where = ""
            if name in every:
                owners = [s.stem for s in chapters(root) if name in chapter_parameters(s)]
                where = f" (it is a parameter of {', '.join(owners)}, not selected)"
            raise UsageError(f"-p {name}: no chapter selected takes a parameter {name!r}{where}"
                             f"{_did_you_mean(name, taken)}; run `python -m vlmlib list` for each chapter's parameters")
        for stem, params in per_chapter.items():
            if name not in params:
                continue
            try:
                value = coerce(text, params[name].types, name, MINIMUMS.get(name))
            except ParameterError as e:
                raise UsageError(f"-p {name}={text}: {e}") from None
            if name in PATH_PARAMETERS and isinstance(value, str) and value not in PATH_PARAMETERS[name]:
                path = Path(value).expanduser()
                path = Path(os.path.abspath(path if path.is_absolute() else cwd / path))
                if not path.exists():
                    raise UsageError(f"-p {name}={text}: no such folder (tried {path}); use "
                                     f"{' or '.join(PATH_PARAMETERS[name])}, or a folder's path")
                value = str(path)
            values[stem][name] = value
    shared_kernels = not kernel_per_chapter and all_embedded(parts.values())
    return Plan(root, out, parts, sources, values, force, replicates, resolve_jobs(jobs, parts.values()),
                shared_kernels)


def all_embedded(models) -> bool:
    """Whether every model is an embedded organism (or test model): small, fast chapters."""
    return all(named_model(m) is not None for m in models)


def resolve_jobs(jobs: int | str, models) -> int:
    """How many chapters run at once. "auto": as many as CPU cores (at most 4) when every model is an
    embedded organism, whose chapters are small and bound by Python overhead; else 1, since a
    checkpoint's chapters each hold the model in (GPU) memory."""
    if jobs == "auto":
        return min(4, os.cpu_count() or 1) if all_embedded(models) else 1
    try:
        value = int(jobs)
    except (TypeError, ValueError):
        raise UsageError(f"--jobs {jobs!r}: give a number of chapters to run at once, or auto") from None
    if value < 1:
        raise UsageError(f"--jobs {value}: at least 1")
    return value


# ---------------------------------------------------------------- fingerprints (shared with caches)


def package_code_files() -> list[Path]:
    """Every file of every subpackage of vlmlib a chapter may run (code, the paper's values, templates),
    not the organisms' weights (the model fingerprint covers those): a moved or edited module changes it."""
    weights = PACKAGE_DIR / "organisms" / "weights"
    return [p for p in package_files(PACKAGE_DIR, (".py", ".json", ".jinja", ".txt"))
            if weights not in p.parents]


def code_fingerprint(source: Path) -> str:
    """Hash of the chapter's source and of every file of the package it may call (`package_code_files`)."""
    source = Path(source).resolve()
    return files_digest([source, *package_code_files()], root=Path(os.path.commonpath([source, PACKAGE_DIR])))


def dataset_fingerprint(dataset) -> str | None:
    """A folder dataset's metadata.jsonl and image list (name, size, mtime); None for generated ones."""
    if not isinstance(dataset, str) or not Path(dataset).is_dir():
        return None
    entries = sorted((str(p.relative_to(dataset)), p.stat().st_size, p.stat().st_mtime_ns)
                     for p in Path(dataset).rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def fingerprint(source: Path, model: str, parameters: dict) -> dict:
    """What a chapter's result depends on; `key` changes when any of it does. A cache of intermediate
    results (e.g. one observation pass shared by chapters) can key on the same parts."""
    parts = {"parameters": parameters, "code": code_fingerprint(source), "model": model_fingerprint(model),
             "dataset": dataset_fingerprint(parameters.get("dataset"))}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {**parts, "key": key}


# ---------------------------------------------------------------- manifest


def read_manifest(part_dir: Path) -> dict:
    """A part folder's run manifest: {"chapters": {stem: {run_id, finished, model, parameters, fingerprint}},
    "runs": [run ids], "mixed": whether the pages come from more than one run}."""
    try:
        return json.loads((Path(part_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {"chapters": {}}


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
    for part in DEFAULT_MODELS:
        manifest = read_manifest(Path(out) / part)
        latest = [e for e in _pages(manifest).values() if e.get("run_id") == manifest.get("latest_run")]
        if latest:
            parts[part] = str(latest[0].get("model"))
        elif (Path(out) / part).is_dir():
            parts[part] = DEFAULT_MODELS[part]
    return parts


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data)


# ---------------------------------------------------------------- lock


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
                if pid > 0 and _alive(pid):
                    raise UsageError(f"another run (pid {pid}, started {holder.get('started', '?')}) is writing into "
                                     f"{self.label}; wait for it to finish (lock: {self.path})") from None
                self.path.unlink(missing_ok=True)  # its run is dead: take over
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "started": _now()}, f)
            self.held = True
            return self
        raise UsageError(f"could not take the run lock {self.path}; remove it if no run is going on")

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- execution


def say(message: str) -> None:
    print(f"[vlmlib] {message}", file=sys.stderr, flush=True)


# Run first in a kernel that has run a chapter before (as a cell of its own, removed from the executed
# notebook): what a fresh kernel gives a chapter, without starting one. Modules stay imported.
KERNEL_RESET = """\
get_ipython().run_line_magic("reset", "-f")  # the previous chapter's names, In/Out history
import gc as _gc, os as _os, sys as _sys
if "matplotlib.pyplot" in _sys.modules:
    _sys.modules["matplotlib.pyplot"].close("all")
_os.chdir({cwd!r})  # the chapter's folder: its results file lands there
_gc.collect()  # the previous chapter's model, now unreferenced
get_ipython().execution_count = 1  # the chapter's first cell is [1], as in a fresh kernel
del _gc, _os, _sys
"""
RESET_TAG = "vlmlib-kernel-reset"


class ChapterKernel:
    """A Jupyter kernel that runs chapters one after another. On the embedded organisms a chapter's own
    compute takes about a second; starting a kernel, importing torch, transformers and the family's model
    code took about three more, paid once per kernel instead of once per chapter (a part's chapters share
    a family). Before every chapter but the first, `KERNEL_RESET` runs. `close()` stops the kernel."""

    def __init__(self, cache_dir: Path | None = None):
        self.dir = _kernel_dir()  # connection file and IPC sockets (TCP would warn "without encryption")
        filters = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), *KERNEL_WARNING_FILTERS]))
        self.env = {**os.environ, **KERNEL_ENV, "HF_HUB_OFFLINE": "1" if offline() else "0", "PYTHONWARNINGS": filters}
        if cache_dir is not None:  # one observation pass shared by the chapters that need it (vlmlib.obscache)
            self.env.setdefault("VLMLIB_CACHE", str(cache_dir))
        self.km = None
        self.clients = []
        self.chapters = 0  # chapters started in this kernel

    def manager(self):
        """The kernel manager papermill runs the next chapter with (started by nbclient on first use)."""
        from jupyter_client.manager import AsyncKernelManager

        if self.km is None:
            km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=str(self.dir / "k"),
                                    connection_file=str(self.dir / "kernel.json"))
            start, client = km.start_kernel, km.client
            # The kernel process's own log lines ("[IPKernelApp] ...") are not the chapter's output
            # (papermill brings that back, errors included) and would land after the runner's last line.
            km.start_kernel = lambda **kw: start(**{"env": self.env, "stderr": subprocess.DEVNULL, **kw})

            def tracked_client(**kw):
                # nbclient leaves the channels of a kernel it did not start open: closed after each chapter.
                self.clients.append(client(**kw))
                return self.clients[-1]

            km.client = tracked_client
            self.km = km
        return self.km

    def chapter_done(self) -> None:
        for kc in self.clients:
            kc.stop_channels()
        self.clients.clear()

    def close(self) -> None:
        """Stop the kernel (nbclient shuts down only kernels it started itself; ours would live on,
        holding the model in memory, until the runner exits) and remove its folder."""
        self.chapter_done()
        if self.km is not None:
            _kill_kernel(self.km)
            self.km = None
        shutil.rmtree(self.dir, ignore_errors=True)


def execute_chapter(source: Path, out_dir: Path, parameters: dict, kernel: ChapterKernel | None = None,
                    progress: bool | dict = False, cache_dir: Path | None = None, exercises: bool = True) -> Path:
    """Convert with jupytext and execute with papermill in `out_dir` (the kernel's working directory; the
    results file lands there), in `kernel` if given (it may have run chapters before), else in a kernel
    of its own. Returns the executed notebook; raises papermill's error on failure, leaving the partial
    notebook in place. `exercises=False`: the chapter's exercises section is left out (`without_exercises`)."""
    import jupytext
    import nbformat
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    raw = out_dir / f".{source.stem}.source.ipynb"
    notebook = jupytext.read(source)
    # A source without a Jupytext header names no kernel: papermill then refuses it ("No language found").
    notebook.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    if not exercises:
        notebook.cells = without_exercises(notebook.cells)
    own = kernel is None
    kernel = kernel or ChapterKernel(cache_dir)
    if kernel.chapters:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_RESET.format(cwd=str(out_dir.resolve())),
                                                           metadata={"tags": [RESET_TAG]}))
    kernel.chapters += 1
    jupytext.write(notebook, raw)
    parameters = {"results": f"{source.stem}.json", **parameters}
    _register_engine()
    try:
        papermill.execute_notebook(str(raw), str(target), parameters=parameters, kernel_name="python3",
                                   cwd=str(out_dir), progress_bar=progress, km=kernel.manager(), engine_name=ENGINE)
    finally:
        raw.unlink(missing_ok=True)
        _drop_reset_cell(target)
        if own:
            kernel.close()
        else:
            kernel.chapter_done()
    return target


EXERCISES_HEADING = "## Exercises"


# Calls that write a chapter's results file (vlmlib.paper.run's finish; a plain JSON write).
RESULTS_WRITERS = (".finish(", "write_json(", "write_results(")


def without_exercises(cells: list) -> list:
    """The cells before the chapter's exercises section: what a training-seed replicate's run needs (its
    results file; nobody reads its notebook), without the solutions' compute (chapter 8's first solution
    runs 36 more knockouts). All cells if a later cell writes the results file, or there is no section."""
    start = next((i for i, c in enumerate(cells)
                  if c.cell_type == "markdown" and c.source.lstrip().startswith(EXERCISES_HEADING)), None)
    if start is None or any(writer in c.source for c in cells[start:] if c.cell_type == "code"
                            for writer in RESULTS_WRITERS):
        return list(cells)
    return list(cells[:start])


ENGINE = "vlmlib"  # papermill's nbclient engine, writing the output notebook at the end only


@functools.cache
def _register_engine() -> None:
    """papermill writes the whole output notebook, figures included, before and after every cell (about
    fifty writes a chapter, about a second on the organisms, more than some chapters compute). This
    engine writes it once: papermill's own writes when the notebook ends, also after a failing cell or
    an interruption, still happen, so a failed chapter's partial notebook is kept as before."""
    from papermill.engines import NBClientEngine, papermill_engines

    class SaveAtEnd(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            nb_man.save = lambda **kw: None  # shadows the method for the cells only
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            finally:
                del nb_man.save

    papermill_engines.register(ENGINE, SaveAtEnd)


def _drop_reset_cell(notebook: Path) -> None:
    """The executed notebook as a fresh kernel would have left it: without the reset cell."""
    import nbformat

    if not notebook.is_file():
        return
    nb = nbformat.read(notebook, as_version=4)
    kept = [c for c in nb.cells if RESET_TAG not in c.get("metadata", {}).get("tags", [])]
    if len(kept) < len(nb.cells):
        nb.cells = kept
        nbformat.write(nb, notebook)


def _kernel_dir() -> Path:
    """A private folder for the kernel's connection file and IPC sockets, in the system temp folder (socket
    paths must stay short), named with our pid so that a later run can sweep it if we were SIGKILLed."""
    for stale in Path(tempfile.gettempdir()).glob("vlmlib-k*-*"):
        pid = stale.name[len("vlmlib-k"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)) and stale.stat().st_uid == os.getuid():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"vlmlib-k{os.getpid()}-"))


def _kill_kernel(km) -> None:
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(10)


def _chapter_error(error: BaseException) -> str:
    """The chapter's own error line ("DatasetError: ..."), not papermill's wrapper."""
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return f"{type(error).__name__}: {error}"


def _recover(state: Path, out: Path) -> None:
    """Under the lock: a run killed mid-swap left `swap-<part>-*` (the part's previous folder) and maybe no
    part folder; put it back. Staging folders of dead runs go."""
    for old in sorted(state.glob("swap-*")):
        part = old.name.split("-")[1]
        if not (out / part).exists():
            os.replace(old, out / part)
        else:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(state / "runs", ignore_errors=True)


def _publish(staging: Path, part_dir: Path, state: Path, run_id: str) -> None:
    """Swap the staged part folder in: two renames, recovered by `_recover` if killed between them."""
    part_dir.parent.mkdir(parents=True, exist_ok=True)
    old = state / f"swap-{part_dir.name}-{run_id}"
    if part_dir.exists():
        os.replace(part_dir, old)
    os.replace(staging, part_dir)
    shutil.rmtree(old, ignore_errors=True)


def run_plan(plan: Plan, progress: bool | None = None, on_chapter=None) -> dict[str, list[str]]:
    """Execute the plan part by part; returns {part: chapters executed}. Raises ChapterFailed (the part's
    pages are left as they were) or Interrupted / KeyboardInterrupt (same)."""
    progress = sys.stderr.isatty() if progress is None else progress
    state = plan.build_dir / "runner"
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{secrets.token_hex(2)}"
    executed: dict[str, list[str]] = {}
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with RunLock(state / "lock", label=str(plan.out)):
            _recover(state, plan.out)
            for part, model in plan.parts.items():
                executed[part] = _run_part(plan, part, model, state / "runs" / run_id / part, state, run_id,
                                           progress, prepare_notebook_for_book, on_chapter)
    finally:
        shutil.rmtree(state / "runs" / run_id, ignore_errors=True)
        if (state / "runs").is_dir() and not any((state / "runs").iterdir()):
            (state / "runs").rmdir()
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return executed


def _raise_interrupted(signum, frame):
    raise Interrupted(f"signal {signum}")


def _runs_of_part(plan: Plan, model: str) -> list[tuple[str, str]]:
    """(folder inside the part, model): the part's pages, then each training-seed replicate's run
    (vlmlib.book.seeds) when the part runs an embedded organism that has replicates."""
    runs = [("", model)]
    if plan.replicates:
        runs += [(f"{SEEDS_FOLDER}/{name}/", name) for name in replicates(model)]
    return runs


def _run_part(plan, part, model, staging, state, run_id, progress, prepare, on_chapter) -> list[str]:
    part_dir = plan.out / part
    old = read_manifest(part_dir)
    entries = dict(old.get("chapters", {}))
    done = []
    staging.mkdir(parents=True, exist_ok=True)
    jobs = []
    for folder, run_model in _runs_of_part(plan, model):
        for source in plan.chapters:
            key = folder + source.stem  # "03_attention_patching", or "seeds/<replicate>/03_attention_patching"
            parameters = {"model": run_model, **plan.parameters[source.stem]}
            fp = fingerprint(source, run_model, parameters)
            entry = entries.get(key, {})
            if (not plan.force and entry.get("fingerprint", {}).get("key") == fp["key"]
                    and (part_dir / f"{key}.ipynb").is_file()):
                say(f"{part}/{key}: up to date (run {entry.get('run_id')}); --force runs it again")
                continue
            (staging / folder).mkdir(parents=True, exist_ok=True)
            jobs.append(ChapterJob(key, folder, source, parameters, fp))
    if plan.jobs > 1:
        jobs = longest_first(jobs, entries)
    cache_dir = plan.root / "_build" / "cache"
    for job, outcome, seconds in _execute_jobs(jobs, part, staging, plan.jobs, plan.shared_kernels, progress,
                                               cache_dir):
        if isinstance(outcome, BaseException):
            kept = _keep_failed(staging / f"{job.key}.ipynb", plan.build_dir / "failed" / part / job.folder)
            raise ChapterFailed(part, job.key, kept, _chapter_error(outcome)) from outcome
        if not job.folder:  # replicates are read for their results, never shown as pages
            prepare(outcome, part)
        entries[job.key] = {"run_id": run_id, "finished": _now(), "seconds": round(seconds, 1),
                            "model": job.parameters["model"], "parameters": job.parameters, "fingerprint": job.fp}
        done.append(job.key)
        say(f"{part}/{job.key}: done in {seconds:.1f} s")
        if on_chapter:
            on_chapter(part, job.key)
    if not done:
        shutil.rmtree(staging, ignore_errors=True)
        return done
    # Merge: the part's other chapters (not asked for, or up to date) come along unchanged, file by file
    # (a replicate's folder may hold some chapters from this run and others from an earlier one).
    if part_dir.is_dir():
        for path in sorted(part_dir.rglob("*")):
            rel = path.relative_to(part_dir)
            # hidden entries are an older runner's side folders (.partial/), never pages
            if (path.is_file() and rel.name != MANIFEST and not any(p.startswith(".") for p in rel.parts)
                    and not (staging / rel).exists()):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / rel)
    present = {str(p.relative_to(staging).with_suffix("")) for p in staging.rglob("*.ipynb")
               if not any(x.startswith(".") for x in p.relative_to(staging).parts)}
    entries = {stem: e for stem, e in entries.items() if stem in present}
    for stem in present - set(entries):
        entries[stem] = {"run_id": None, "note": "from a run before run manifests existed"}
    runs = sorted({e.get("run_id") or "unknown" for e in entries.values()})
    _write_json(staging / MANIFEST, {"part": part, "updated": _now(), "latest_run": run_id, "runs": runs,
                                     "mixed": len(runs) > 1, "models": sorted({str(e.get("model")) for e in entries.values()}),
                                     "chapters": entries})
    _publish(staging, part_dir, state, run_id)
    if len(runs) > 1:
        say(f"{part}: pages now come from {len(runs)} runs ({', '.join(runs)}); see {part_dir / MANIFEST}")
    return done


def longest_first(jobs: list[ChapterJob], entries: dict) -> list[ChapterJob]:
    """The order chapters start in when several run at once: longest first by their last run's time
    (a chapter never run before: by the same chapter's time on the part's pages), so that no long
    chapter starts last while the other workers idle; unknown times keep the natural order, chapter
    by chapter across the training seeds. The first chapter of each seed (the observation pass the
    others load) comes before those that load it, and obscache's lock covers the rest."""
    def last_time(job: ChapterJob) -> float:
        entry = entries.get(job.key) or entries.get(job.source.stem) or {}
        return float(entry.get("seconds") or 0.0)

    order = {source: i for i, source in enumerate(dict.fromkeys(job.source for job in jobs))}
    return sorted(jobs, key=lambda job: (-last_time(job), order[job.source]))


@dataclass
class ChapterJob:
    key: str  # where the notebook goes inside the part, without .ipynb
    folder: str  # "" for the part's pages, "seeds/<replicate>/" for a replicate's run (no exercises)
    source: Path
    parameters: dict
    fp: dict


class _WorkerError(Exception):
    """A chapter's error brought back from a worker process (papermill's own errors do not pickle)."""

    def __init__(self, ename: str, evalue: str):
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue = ename, evalue


def _announce(part: str, job: ChapterJob) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in job.parameters.items() if k != "model")
    say(f"{part}/{job.key} on {job.parameters['model']}" + (f" ({shown})" if shown else "") + " ...")


def _execute_jobs(jobs: list[ChapterJob], part: str, staging: Path, n_jobs: int, shared_kernels: bool, progress,
                  cache_dir: Path):
    """Yield (job, executed notebook or the exception it raised, seconds) as chapters finish; stops after
    the first failure. With n_jobs > 1 the chapters run in forked worker processes, each kernel limited to
    its share of the CPU cores; the others are stopped (their kernels with them) when one fails or the
    run is interrupted. `shared_kernels`: each worker (or the runner) runs its chapters in one kernel
    (`ChapterKernel`); else a kernel per chapter."""
    if n_jobs <= 1 or len(jobs) <= 1:
        kernel = ChapterKernel(cache_dir) if shared_kernels else None
        try:
            for job in jobs:
                _announce(part, job)
                start = time.perf_counter()
                bar = {"desc": f"{part}/{job.key}", "leave": False} if progress else False
                try:
                    outcome = execute_chapter(job.source, staging / job.folder, job.parameters, kernel, bar,
                                              cache_dir=cache_dir, exercises=not job.folder)
                except Exception as error:
                    outcome = error
                yield job, outcome, time.perf_counter() - start
                if isinstance(outcome, BaseException):
                    return
        finally:
            if kernel is not None:
                kernel.close()
        return
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    pool = multiprocessing.get_context("fork").Pool(min(n_jobs, len(jobs)), initializer=_worker_init)
    every_chapter_ran = False
    try:
        pending = {}
        for job in jobs:  # each worker says when its chapter starts
            pending[job.key] = (job, pool.apply_async(_worker_execute, (part, job, staging, cache_dir, threads,
                                                                        shared_kernels)))
        while pending:
            finished = [key for key, (_, result) in pending.items() if result.ready()]
            if not finished:
                time.sleep(0.05)
                continue
            for key in finished:
                job, result = pending.pop(key)
                kind, value, seconds = result.get()
                outcome = Path(value) if kind == "done" else _WorkerError(*value)
                yield job, outcome, seconds
                if kind != "done":
                    return
        every_chapter_ran = True
    finally:
        if every_chapter_ran:
            pool.close()  # the workers are idle: let them exit
        else:
            pool.terminate()  # a failure, or an interruption: SIGTERM stops each worker's chapter and kernel
        pool.join()


_chapter_running = False  # in a worker: whether a chapter (and its kernel) is running now
_worker_kernel: ChapterKernel | None = None  # in a worker: the kernel its chapters share


def _worker_init() -> None:
    """A worker leaves Ctrl-C to the runner (which stops the workers) and turns SIGTERM into an orderly
    stop: a running chapter's kernel is killed first (execute_chapter's cleanup), then the worker exits
    without a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)


def _worker_sigterm(signum, frame):
    if _chapter_running:
        raise Interrupted(f"signal {signum}")
    _close_worker_kernel()
    os._exit(128 + signum)


def _close_worker_kernel() -> None:
    global _worker_kernel
    if _worker_kernel is not None:
        _worker_kernel.close()
        _worker_kernel = None


def _worker_execute(part: str, job: ChapterJob, staging: Path, cache_dir: Path, threads: int, shared_kernels: bool):
    """One chapter in a worker process: ("done", notebook path, s) or ("failed", (ename, evalue), s)."""
    global _chapter_running, _worker_kernel
    import multiprocessing.util

    os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernel inherits it: parallel chapters share the cores
    if shared_kernels and _worker_kernel is None:
        _worker_kernel = ChapterKernel(cache_dir)
        multiprocessing.util.Finalize(None, _close_worker_kernel, exitpriority=10)  # when the pool closes
    _announce(part, job)
    start = time.perf_counter()
    _chapter_running = True
    try:
        notebook = execute_chapter(job.source, staging / job.folder, job.parameters, _worker_kernel, False,
                                   cache_dir=cache_dir, exercises=not job.folder)
    except Interrupted:
        _close_worker_kernel()
        os._exit(128 + signal.SIGTERM)
    except Exception as error:
        ename, _, evalue = _chapter_error(error).partition(": ")
        return "failed", (ename, evalue), time.perf_counter() - start
    finally:
        _chapter_running = False
    return "done", str(notebook), time.perf_counter() - start


def _keep_failed(partial: Path, failed_dir: Path) -> Path | None:
    if not partial.is_file():
        return None
    failed_dir.mkdir(parents=True, exist_ok=True)
    kept = failed_dir / partial.name
    os.replace(partial, kept)
    return kept


def page_notes(root: Path) -> dict[Path, tuple[str | None, str | None]]:
    """What goes under each built chapter's title: links to the same chapter for the other families (one
    click away) and the side-by-side view, and a note when the part's pages come from different runs."""
    built = {part: {nb.stem for nb in (Path(root) / "book" / part).glob("[0-9][0-9]_*.ipynb")} for part in DEFAULT_MODELS}
    notes = {}
    for part, stems in built.items():
        note = describe_manifest(read_manifest(Path(root) / "book" / part)) if stems else None
        for stem in sorted(stems):
            others = [f"[{part_title(other)}](../{other}/{stem}.ipynb)"
                      for other in built if other != part and stem in built[other]]
            links = ("**The same chapter for** " + " · ".join(others)
                     + " · [all families side by side](../side-by-side.md)") if others else None
            notes[Path(root) / "book" / part / f"{stem}.ipynb"] = (links, note)
    return notes


def build_html(root: Path = ROOT, parts: dict[str, str] | None = None) -> Path:
    """Generated pages (vlmlib.book.pages), then Jupyter Book's HTML into root/_build/html."""
    root = Path(root)
    by_seed = {}
    for notebook, (links, note) in page_notes(root).items():
        set_page_note(notebook, links, note)
        part = notebook.parent.name
        if part not in by_seed:
            by_seed[part] = seed_results(notebook.parent)
        set_seed_section(notebook, chapter_section(notebook.stem, by_seed[part], part))
    generate_pages(root, parts or dict(DEFAULT_MODELS))
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(root)]
    subprocess.run(command, check=True, cwd=root)
    return root / "_build" / "html"
