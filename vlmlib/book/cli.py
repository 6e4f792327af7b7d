"""`python -m vlmlib`: run chapters, build the book, list what there is.

Every path you give (--root, --out, a model folder, -p dataset=FOLDER) is read from the directory you
run the command in. Arguments are all checked before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..models import embedded_names
from . import plan as planning
from .execute import WriteError
from .manifest import built_parts
from .runner import ChapterFailed, Interrupted, build_html, run_plan, say

EPILOG_RUN = """\
examples:
  python -m vlmlib run                                   # every chapter, both families
  python -m vlmlib run 01 03 --only paligemma            # chapters 01 and 03 of the PaliGemma part
  python -m vlmlib run --model qwen2vl=~/ckpt/Qwen2-VL-2B-Instruct -p device cuda -p n_samples 200
  python -m vlmlib run 03 -p directions=early->mid,late->mid -p positions vision
  python -m vlmlib run 01 -p dataset=./my_images --out /tmp/trial   # pages into /tmp/trial/<part>/

parts and models:
  A part is a section of the book, named after its model family (paligemma, qwen2vl); its default
  model is the embedded organism (paligemma-shapes, qwen2vl-shapes). --model PART=MODEL takes an
  embedded model's name, a local checkpoint folder (config.json, weights, tokenizer/processor files), or
  a Hugging Face hub id already in the local cache; its family must be the part's.

parameters:
  -p NAME=VALUE or -p NAME VALUE, repeatable. NAME must be a parameter of a chapter being run
  (`python -m vlmlib list` shows them); a parameter only some chapters take goes to those only.
  Values are read like the chapter's default: numbers as numbers, lists as comma-separated text
  (a,b,c) or a Python list, dicts as Python dicts.

what a run writes:
  <out>/<part>/NN_chapter.ipynb (the page), NN_chapter.json (its numbers), run-manifest.json (which
  run each chapter comes from: run id, time, parameters, model, fingerprint), and on the embedded
  organisms <out>/<part>/seeds/<replicate>/: the same chapters on the organisms trained with other
  seeds (their spread goes on each chapter page and on What holds; --no-replicates skips them). A part's
  folder is replaced only when every chapter asked for succeeded; a chapter whose parameters, code, model and
  dataset are unchanged since its last run is skipped (--force runs it anyway). A failing chapter's
  partial notebook is kept in <root>/_build/failed/<part>/ and its error is the last line printed.
  One run at a time per book; Ctrl-C or SIGTERM leave the book as it was.
"""


def _add_run_options(parser: argparse.ArgumentParser, with_out: bool) -> None:
    parser.add_argument(
        "chapter", nargs="*", help="chapter prefixes, e.g. 01 03 or 05_probing (default: all)"
    )
    parser.add_argument(
        "--chapters", nargs="*", default=[], metavar="CHAPTER", help="same as the positional CHAPTERs"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="PART", help="parts to run (default: all): paligemma, qwen2vl"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PART=MODEL",
        help="run part PART on MODEL instead of its default (repeatable)",
    )
    parser.add_argument(
        "-p",
        "--parameter",
        action="append",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="a chapter parameter: -p n_samples=32 or -p n_samples 32 (repeatable)",
    )
    parser.add_argument(
        "--root",
        default=str(planning.ROOT),
        help="the project folder with notebooks/ and _toc.yml (default: this checkout)",
    )
    if with_out:
        parser.add_argument(
            "--out", help="folder for the part folders (default: ROOT/book, the book's sources)"
        )
    parser.add_argument(
        "--force", action="store_true", help="run chapters even when their results are up to date"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no per-cell progress bar, one line per chapter"
    )
    parser.add_argument(
        "--jobs",
        default="auto",
        metavar="N",
        help="chapters run at once, each in its own kernel (default auto: one per CPU core, up to 4, "
        "on the embedded organisms; 1 for any other model)",
    )
    parser.add_argument(
        "--kernel-per-chapter",
        action="store_true",
        help="a fresh kernel for every chapter (default: on the embedded organisms, a kernel runs "
        "chapters one after another, its namespace cleared in between; on any other model, "
        "a kernel per chapter)",
    )
    parser.add_argument(
        "--no-replicates",
        action="store_true",
        help="skip the runs on the organisms' training-seed replicates (about 2x faster; the pages "
        "then show no spread across training seeds)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlmlib",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the book's chapters (Jupytext notebooks, executed by papermill), build its HTML, "
        "and list chapters, models and parameters.",
        epilog="`make book` is `python -m vlmlib book`. `python -m vlmlib COMMAND --help` for each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="execute chapters for one or more parts into a folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_RUN,
        description="Execute chapters (default: all) for each part (default: all) "
        "and put the pages and their results in OUT/<part>/.",
    )
    _add_run_options(run, with_out=True)

    whole = commands.add_parser(
        "book",
        help="run every chapter of every part, then build the HTML (make book)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_RUN,
        description="`run` into ROOT/book, then `build`. Takes run's options, and "
        "--no-html to stop after running.",
    )
    _add_run_options(whole, with_out=False)
    whole.add_argument("--no-html", action="store_true", help="execute the chapters only")

    html = commands.add_parser(
        "build",
        help="build the HTML from the chapters already run",
        description="Write the generated pages (vlmlib.book.pages) and build the book "
        "with Jupyter Book into ROOT/_build/html. Runs no chapter.",
    )
    html.add_argument(
        "--root", default=str(planning.ROOT), help="the project folder (default: this checkout)"
    )

    listing = commands.add_parser(
        "list",
        help="chapters, models and every chapter's parameters with defaults",
        description="What `run` can be given: chapters, parts and their default "
        "models, embedded models, and each chapter's parameters.",
    )
    listing.add_argument(
        "--root", default=str(planning.ROOT), help="the project folder (default: this checkout)"
    )
    return parser


def _parameters(items: list[list[str]]) -> list[tuple[str, str]]:
    pairs = []
    for tokens in items:
        if len(tokens) == 1 and "=" in tokens[0]:
            name, _, value = tokens[0].partition("=")
        elif len(tokens) == 2 and "=" not in tokens[0]:
            name, value = tokens
        else:
            raise planning.UsageError(
                f"-p {' '.join(tokens)}: write -p NAME=VALUE or -p NAME VALUE (one parameter "
                "per -p; put chapter names before the options)"
            )
        if not name.isidentifier():
            raise planning.UsageError(f"-p {' '.join(tokens)}: {name!r} is not a parameter name")
        pairs.append((name, value))
    return pairs


def _plan(args, out=None) -> planning.Plan:
    return planning.make_plan(
        root=args.root,
        out=out,
        chapter_selection=(args.chapter + args.chapters) or None,
        only=args.only,
        models=args.model,
        parameters=_parameters(args.parameter),
        force=args.force,
        replicates=not args.no_replicates,
        jobs=args.jobs,
        kernel_per_chapter=args.kernel_per_chapter,
    )


def _run(plan: planning.Plan, args) -> None:
    progress = False if args.no_progress else None
    started = time.perf_counter()
    executed = run_plan(plan, progress=progress)
    count = sum(len(v) for v in executed.values())
    say(f"{count} chapter(s) executed in {time.perf_counter() - started:.0f} s; pages in {plan.out}")


def list_everything(root: Path) -> str:
    lines = ["parts (book section: default model):"]
    lines += [f"  {part}: {model}" for part, model in planning.DEFAULT_MODELS.items()]
    lines += [
        "embedded models (--model PART=NAME; or a checkpoint folder, or a cached hub id):",
        "  " + ", ".join(embedded_names()),
    ]
    sources = planning.chapters(root)
    tables = {s.stem: planning.chapter_parameters(s) for s in sources}
    common = [n for n in next(iter(tables.values())) if all(n in t for t in tables.values())]

    def line(p):
        comment = f"  # {p.comment}" if p.comment else ""
        return f"    {p.name} = {p.default!r}{comment}"

    lines.append("chapters: " + ", ".join(tables))
    lines.append("parameters of every chapter (-p NAME=VALUE; defaults may differ per chapter):")
    shown = tables[sources[0].stem]
    lines += [line(shown[n]) for n in common if n not in planning.RUNNER_PARAMETERS]
    lines += [f"    ({n}: set by the runner, use {how})" for n, how in planning.RUNNER_PARAMETERS.items()]
    for stem, table in tables.items():
        own = [
            p
            for n, p in table.items()
            if n not in planning.RUNNER_PARAMETERS and (n not in common or p.default != shown[n].default)
        ]
        if own:
            lines.append(f"  {stem}:")
            lines += [line(p) for p in own]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            print(list_everything(Path(os.path.abspath(Path(args.root).expanduser()))))
            return 0
        if args.command == "build":
            root = Path(os.path.abspath(Path(args.root).expanduser()))
            html = build_html(root, built_parts(root / "book"))
            say(f"HTML in {html}/index.html")
            return 0
        plan = _plan(args, out=getattr(args, "out", None))
        _run(plan, args)
        if args.command == "book" and not args.no_html:
            html = build_html(plan.root, built_parts(plan.root / "book"))
            say(f"HTML in {html}/index.html")
        return 0
    except planning.UsageError as e:
        print(f"python -m vlmlib {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ChapterFailed as e:
        where = f"; its partial notebook: {e.notebook}" if e.notebook else ""
        say(f"{e.part}/{e.chapter} failed{where}")
        say(f"part {e.part}: nothing published, its pages are those of the previous run")
        print(e.error, file=sys.stderr, flush=True)  # the chapter's own error, last
        return 1
    except WriteError as e:  # the runner's own writes (a chapter's are its ChapterFailed)
        say("stopped: a file could not be written; a part is published whole or not at all")
        print(f"OSError: {e}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        say(f"interrupted ({str(e) or 'Ctrl-C'}): nothing half-run was published; staging removed")
        return 143 if isinstance(e, Interrupted) else 130
