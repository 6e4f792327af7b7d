"""The book runner: Jupytext sources -> papermill-executed notebooks per model -> Jupyter Book HTML.

    python -m vlmlib.book                       # every chapter, every default model, then the HTML
    python -m vlmlib.book --chapters 01 --no-html
    python -m vlmlib.book --model qwen2vl=Qwen/Qwen2-VL-2B-Instruct -p device=cuda -p n_samples=200

Executed notebooks and their results files land in book/<part>/ (build products, not committed);
_toc.yml picks them up by glob, one part per model family.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project: _config.yml, _toc.yml, book/, notebooks/

# Book part (folder under book/, a part of _toc.yml) -> the model its chapters run on.
DEFAULT_MODELS = {
    "paligemma": "paligemma-shapes",  # the embedded model organisms (vlmlib/organisms/, vlmlib/train.py)
    "qwen2vl": "qwen2vl-shapes",
}


def chapters(root: Path = ROOT, selection: list[str] | None = None) -> list[Path]:
    """Chapter sources notebooks/NN_name.py, optionally only those whose name starts with a selection."""
    every = sorted((root / "notebooks").glob("[0-9][0-9]_*.py"))
    found = [p for p in every if not selection or any(p.stem.startswith(s) for s in selection)]
    if not found:
        raise SystemExit(f"no chapter matches {selection}; chapters: {[p.stem for p in every]}")
    return found


def execute_chapter(source: Path, out_dir: Path, parameters: dict) -> Path:
    """Convert with jupytext, execute with papermill; the executed copy appears only once complete."""
    import jupytext
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    parameters = {"results": str(out_dir / f"{source.stem}.json"), **parameters}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / target.name
        jupytext.write(jupytext.read(source), raw)
        # Executed into a side folder (which _toc.yml's glob does not read), then renamed into place.
        partial_dir = out_dir / ".partial"
        partial_dir.mkdir(exist_ok=True)
        executed = partial_dir / target.name
        try:
            papermill.execute_notebook(str(raw), str(executed), parameters=parameters, kernel_name="python3",
                                       cwd=str(out_dir), progress_bar=False)
        except BaseException:
            executed.unlink(missing_ok=True)
            raise
        os.replace(executed, target)
    return target


def build_html(root: Path = ROOT) -> Path:
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(root)]
    subprocess.run(command, check=True, cwd=root)
    return root / "_build" / "html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chapters", nargs="*", help="chapter prefixes, e.g. 01 03 (default: all)")
    parser.add_argument("--model", action="append", default=[], metavar="PART=MODEL",
                        help="run part PART on MODEL instead of its default (repeatable)")
    parser.add_argument("--only", nargs="*", help="book parts to execute (default: all configured)")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="papermill parameter for every chapter (values parsed as Python literals)")
    parser.add_argument("--no-html", action="store_true", help="execute notebooks only")
    parser.add_argument("--root", type=Path, default=ROOT, help="project folder (default: this checkout)")
    args = parser.parse_args(argv)

    models = dict(DEFAULT_MODELS)
    for item in args.model:
        part, _, name = item.partition("=")
        models[part] = name
    if args.only:
        models = {part: models[part] for part in args.only}
    extra = dict(parse_parameter(p) for p in args.parameter)
    # Kernels inherit the environment: a headless MPLBACKEND (Agg) would drop every figure.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

    for part, model in models.items():
        for source in chapters(args.root, args.chapters):
            start = time.perf_counter()
            execute_chapter(source, args.root / "book" / part, {"model": model, **extra})
            print(f"[book] {part}/{source.stem} on {model}: {time.perf_counter() - start:.1f} s", flush=True)
    if not args.no_html:
        html = build_html(args.root)
        print(f"[book] HTML in {html}/index.html")
    return 0


def parse_parameter(item: str):
    import ast

    name, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"parameter {item!r} should be NAME=VALUE")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value  # a plain string


if __name__ == "__main__":
    raise SystemExit(main())
