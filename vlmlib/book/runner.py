"""The book runner: Jupytext chapter sources -> papermill-executed notebooks per book part -> HTML.

The command line is `python -m vlmlib` (vlmlib/book/cli.py). The plan is checked first (`plan.py`);
`run_plan` executes a part's chapters (`execute.py`) into a staging folder under
`<root>/_build/runner/` (which the book never reads) and swaps the part's folder in only when every
chapter asked for succeeded; a subset run is merged with the part's other chapters, and the manifest
says where each page comes from (`manifest.py`). Chapters run `jobs` at a time (forked workers).
Interrupted runs leave only `_build/` files, removed by the next run. `build_html` writes the
generated pages and builds the HTML with Jupyter Book.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..util import write_json
from .execute import ChapterKernel, chapter_error, execute_chapter
from .manifest import MANIFEST, RunLock, describe_manifest, fingerprint, now, read_manifest
from .notebooks import prepare_notebook_for_book, set_page_note
from .pages import generate_pages, part_title
from .plan import DEFAULT_MODELS, ROOT, Plan
from .seeds import SEEDS_FOLDER, chapter_section, replicates, seed_results, set_seed_section


class ChapterFailed(Exception):
    """A chapter raised; its partial notebook was kept at `notebook` for debugging."""

    def __init__(self, part: str, chapter: str, notebook: Path | None, error: str):
        super().__init__(f"{part}/{chapter}: {error}")
        self.part, self.chapter, self.notebook, self.error = part, chapter, notebook, error


class Interrupted(BaseException):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C."""


def say(message: str) -> None:
    print(f"[vlmlib] {message}", file=sys.stderr, flush=True)


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
                executed[part] = _run_part(
                    plan,
                    part,
                    model,
                    state / "runs" / run_id / part,
                    state,
                    run_id,
                    progress,
                    prepare_notebook_for_book,
                    on_chapter,
                )
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
            key = (
                folder + source.stem
            )  # "03_attention_patching", or "seeds/<replicate>/03_attention_patching"
            parameters = {"model": run_model, **plan.parameters[source.stem]}
            fp = fingerprint(source, run_model, parameters)
            entry = entries.get(key, {})
            if (
                not plan.force
                and entry.get("fingerprint", {}).get("key") == fp["key"]
                and (part_dir / f"{key}.ipynb").is_file()
            ):
                say(f"{part}/{key}: up to date (run {entry.get('run_id')}); --force runs it again")
                continue
            (staging / folder).mkdir(parents=True, exist_ok=True)
            jobs.append(ChapterJob(key, folder, source, parameters, fp))
    if plan.jobs > 1:
        jobs = longest_first(jobs, entries)
    cache_dir = plan.root / "_build" / "cache"
    for job, outcome, seconds in _execute_jobs(
        jobs, part, staging, plan.jobs, plan.shared_kernels, progress, cache_dir
    ):
        if isinstance(outcome, BaseException):
            kept = _keep_failed(staging / f"{job.key}.ipynb", plan.build_dir / "failed" / part / job.folder)
            raise ChapterFailed(part, job.key, kept, chapter_error(outcome)) from outcome
        if not job.folder:  # replicates are read for their results, never shown as pages
            prepare(outcome, part)
        entries[job.key] = {
            "run_id": run_id,
            "finished": now(),
            "seconds": round(seconds, 1),
            "model": job.parameters["model"],
            "parameters": job.parameters,
            "fingerprint": job.fp,
        }
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
            if (
                path.is_file()
                and rel.name != MANIFEST
                and not any(p.startswith(".") for p in rel.parts)
                and not (staging / rel).exists()
            ):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / rel)
    present = {
        str(p.relative_to(staging).with_suffix(""))
        for p in staging.rglob("*.ipynb")
        if not any(x.startswith(".") for x in p.relative_to(staging).parts)
    }
    entries = {stem: e for stem, e in entries.items() if stem in present}
    for stem in present - set(entries):
        entries[stem] = {"run_id": None, "note": "from a run before run manifests existed"}
    runs = sorted({e.get("run_id") or "unknown" for e in entries.values()})
    write_json(
        staging / MANIFEST,
        {
            "part": part,
            "updated": now(),
            "latest_run": run_id,
            "runs": runs,
            "mixed": len(runs) > 1,
            "models": sorted({str(e.get("model")) for e in entries.values()}),
            "chapters": entries,
        },
    )
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


def _execute_jobs(
    jobs: list[ChapterJob],
    part: str,
    staging: Path,
    n_jobs: int,
    shared_kernels: bool,
    progress,
    cache_dir: Path,
):
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
                    outcome = execute_chapter(
                        job.source,
                        staging / job.folder,
                        job.parameters,
                        kernel,
                        bar,
                        cache_dir=cache_dir,
                        exercises=not job.folder,
                    )
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
            pending[job.key] = (
                job,
                pool.apply_async(_worker_execute, (part, job, staging, cache_dir, threads, shared_kernels)),
            )
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


def _worker_execute(
    part: str, job: ChapterJob, staging: Path, cache_dir: Path, threads: int, shared_kernels: bool
):
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
        notebook = execute_chapter(
            job.source,
            staging / job.folder,
            job.parameters,
            _worker_kernel,
            False,
            cache_dir=cache_dir,
            exercises=not job.folder,
        )
    except Interrupted:
        _close_worker_kernel()
        os._exit(128 + signal.SIGTERM)
    except Exception as error:
        ename, _, evalue = chapter_error(error).partition(": ")
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
    built = {
        part: {nb.stem for nb in (Path(root) / "book" / part).glob("[0-9][0-9]_*.ipynb")}
        for part in DEFAULT_MODELS
    }
    notes = {}
    for part, stems in built.items():
        note = describe_manifest(read_manifest(Path(root) / "book" / part)) if stems else None
        for stem in sorted(stems):
            others = [
                f"[{part_title(other)}](../{other}/{stem}.ipynb)"
                for other in built
                if other != part and stem in built[other]
            ]
            links = (
                (
                    "**The same chapter for** "
                    + " · ".join(others)
                    + " · [all families side by side](../side-by-side.md)"
                )
                if others
                else None
            )
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
