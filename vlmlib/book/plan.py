"""The plan of a run: which chapters, parts, models and parameters, checked before anything runs.

`make_plan` checks everything first: part names, `PART=MODEL`, the model's family against the part's
(read from config.json, no weights loaded), parameter names against each chapter's parameters cell and
values against the defaults' types. User paths are made absolute from the user's current directory,
because each chapter's kernel runs in its output folder.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..data.samples import check_image_size, check_question
from ..families import families, family_of_model_type, supported_model_types
from ..models import embedded_names, named_model, resolve_device, resolve_dtype
from ..organisms import DEFAULT_ORGANISMS
from ..paper.run import MINIMUMS
from ..params import ParameterError, coerce

# The project this runner belongs to (_config.yml, _toc.yml, book/, notebooks/): the checkout holding the
# package; `--root` names another.
ROOT = Path(__file__).resolve().parents[2]
# Book part (folder under book/, a part of _toc.yml) -> the model its chapters run on by default.
# A part's name is its model family's name (vlmlib.families): the family decides what a part may run.
DEFAULT_MODELS = dict(DEFAULT_ORGANISMS)


def book_parts() -> list[str]:
    """Every part a run may have: the default parts, then one per other registered family, which has no
    default model and runs when given one (`--model gemma3=path/to/checkpoint`)."""
    return list(dict.fromkeys([*DEFAULT_MODELS, *(f.name for f in families())]))


# Parameters the runner sets itself, and the option a user sets them with instead.
RUNNER_PARAMETERS = {
    "model": "--model PART=MODEL",
    "results": "--out DIR (results are written next to the pages)",
}
# Parameters whose value is a user path unless it is one of the named choices.
PATH_PARAMETERS = {"dataset": ("shapes", "pixelprose")}


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1") not in ("0", "", "false", "False")


class UsageError(Exception):
    """Bad arguments, found before anything ran; the message says what to type instead."""


def chapters(root: Path = ROOT, selection: list[str] | None = None) -> list[Path]:
    """Chapter sources notebooks/NN_name.py, optionally only those whose name starts with a selection."""
    every = sorted((Path(root) / "notebooks").glob("[0-9][0-9]_*.py"))
    if not every:
        raise UsageError(
            f"{Path(root).resolve()} has no chapters (notebooks/NN_name.py): is --root the project folder?"
        )
    found = [p for p in every if not selection or any(p.stem.startswith(s) for s in selection)]
    unmatched = [s for s in selection or [] if not any(p.stem.startswith(s) for p in every)]
    if unmatched or not found:
        raise UsageError(
            f"no chapter matches {unmatched or selection}; chapters: {', '.join(p.stem for p in every)}"
        )
    return found


@dataclass
class Parameter:
    name: str
    default: object
    types: tuple  # accepted types; () means any
    comment: str = ""


_ANNOTATION_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "list": list,
    "dict": dict,
    "bool": bool,
    "None": type(None),
}


def _annotation_types(node) -> tuple:
    names = [
        n.id if isinstance(n, ast.Name) else "None"
        for n in ast.walk(node)
        if isinstance(n, ast.Name) or (isinstance(n, ast.Constant) and n.value is None)
    ]
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
        raise UsageError(f'{source} has no parameters cell (# %% tags=["parameters"])')
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
        rest = cell[node.end_lineno - 1][node.end_col_offset :]
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        found[target] = Parameter(target, default, types, comment)
    return found


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
            raise UsageError(
                f"model folder {model} has no config.json: pass a folder written by save_pretrained"
            )
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
    raise UsageError(
        f"model {model}: model_type {model_type!r} in {config} is not a supported family "
        f"({supported_model_types()})"
    )


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
        raise UsageError(
            f"model {model!r}: no such folder (tried {os.path.abspath(path)}), not an embedded model "
            f"({', '.join(embedded_names())}), and not a hub id of the form 'org/name'"
        )
    return model  # a hub id


@dataclass
class Plan:
    root: Path  # project folder (notebooks/, _toc.yml)
    out: Path  # where part folders go (default root/book)
    parts: dict[str, str]  # part -> model
    chapters: list[Path]
    parameters: dict[str, dict]  # chapter stem -> parameters it receives (model and results excluded)
    force: bool = False
    replicates: bool = (
        True  # also run each chapter on the part's training-seed replicates (vlmlib.book.seeds)
    )
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
    known = list(known_parts or book_parts())
    models = {}
    for item in items:
        part, sep, model = item.partition("=")
        if not sep or not part or not model:
            raise UsageError(
                f"--model {item!r}: write PART=MODEL, e.g. --model paligemma=path/to/checkpoint "
                f"(parts: {', '.join(known)})"
            )
        if part not in known:
            raise UsageError(
                f"--model {item!r}: unknown part {part!r}{_did_you_mean(part, known)}; "
                f"parts: {', '.join(known)}"
            )
        models[part] = model
    return models


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_plan(
    root: Path | str = ROOT,
    out: Path | str | None = None,
    chapter_selection: list[str] | None = None,
    only: list[str] | None = None,
    models: list[str] | None = None,
    parameters: list[tuple[str, str]] | None = None,
    force: bool = False,
    cwd: Path | None = None,
    replicates: bool = True,
    jobs: int | str = 1,
    kernel_per_chapter: bool = False,
) -> Plan:
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
        every = book_parts()
        unknown = [p for p in only if p not in every]
        if unknown:
            raise UsageError(
                f"--only {' '.join(unknown)}: unknown part{'s' if len(unknown) > 1 else ''}"
                f"{_did_you_mean(unknown[0], every)}; parts: {', '.join(every)}"
            )
        modelless = [p for p in only if p not in parts and p not in chosen]
        if modelless:
            raise UsageError(
                f"--only {modelless[0]}: part {modelless[0]!r} has no default model; give it one with "
                f"--model {modelless[0]}=MODEL (a checkpoint folder, a cached hub id, {modelless[0]}-random)"
            )
        parts = {p: parts.get(p) for p in only}
    outside = [p for p in chosen if only and p not in parts]  # without --only, a part given a model runs
    if outside:
        raise UsageError(
            f"--model {outside[0]}=...: part {outside[0]!r} is not among --only {' '.join(only or [])}"
        )
    parts.update(chosen)
    for part, model in parts.items():
        parts[part] = model = resolve_model(model, cwd)
        family = model_family(model)
        if family is not None and family != part:
            raise UsageError(
                f"--model {part}={model}: that is a {family} model, and part {part!r} is the {part} "
                f"family's; use --model {family}={model}"
            )
        if family is None and offline():
            raise UsageError(
                f"--model {part}={model}: not an embedded model, not a local folder, and not in the "
                "local Hugging Face cache. Download it where there is network (`hf download "
                f"{model}`) and pass the folder, or allow downloads with HF_HUB_OFFLINE=0"
            )

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
            raise UsageError(
                f"-p {name}: no chapter selected takes a parameter {name!r}{where}"
                f"{_did_you_mean(name, taken)}; run `python -m vlmlib list` for each chapter's parameters"
            )
        for stem, params in per_chapter.items():
            if name not in params:
                continue
            try:
                value = coerce(text, params[name].types, name, MINIMUMS.get(name))
            except ParameterError as e:
                raise UsageError(f"-p {name}={text}: {e}") from None
            try:  # checked here, not in the kernel after the run has started
                if name == "device":
                    resolve_device(value)
                elif name == "dtype":
                    resolve_dtype(value, resolve_device("cpu"))
                elif name == "image_size":
                    check_image_size(value)
                elif name == "question" and value is not None:
                    value = check_question(value)
            except ValueError as e:
                raise UsageError(f"-p {name}={text}: {e}") from None
            if name in PATH_PARAMETERS and isinstance(value, str) and value not in PATH_PARAMETERS[name]:
                path = Path(value).expanduser()
                path = Path(os.path.abspath(path if path.is_absolute() else cwd / path))
                if not path.exists():
                    raise UsageError(
                        f"-p {name}={text}: no such folder (tried {path}); use "
                        f"{' or '.join(PATH_PARAMETERS[name])}, or a folder's path"
                    )
                value = str(path)
            values[stem][name] = value
    shared_kernels = not kernel_per_chapter and all_embedded(parts.values())
    return Plan(
        root,
        out,
        parts,
        sources,
        values,
        force,
        replicates,
        resolve_jobs(jobs, parts.values()),
        shared_kernels,
    )


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
