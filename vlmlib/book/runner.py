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

import contextlib
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
from .execute import ChapterKernel, WriteError, chapter_error, execute_chapter, kernel_dirs
from .manifest import MANIFEST, RunLock, describe_manifest, fingerprint, now, published_problem, read_manifest
from .notebooks import prepare_notebook_for_book, set_page_note
from .pages import generate_pages, part_title
from .plan import DEFAULT_MODELS, ROOT, Plan, book_parts
from .seeds import SEEDS_FOLDER, chapter_section, replicates, seed_results, set_seed_section

CACHE_REFRESH_ENV = "VLMLIB_CACHE_REFRESH"  # vlmlib.obscache.REFRESH_ENV (obscache imports torch)


class ChapterFailed(Exception):
    """A chapter raised; its partial notebook was kept at `notebook` for debugging."""

    def __init__(self, part: str, chapter: str, notebook: Path | None, error: str):
        super().__init__(f"{part}/{chapter}: {error}")
        self.part, self.chapter, self.notebook, self.error = part, chapter, notebook, error


class Interrupted(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that cleanup runs as for Ctrl-C (a KeyboardInterrupt: raised
    inside an asyncio callback, as in papermill's kernel client, it is passed on, not swallowed)."""


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
        with _writing(state), RunLock(state / "lock", label=str(plan.out)):
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
    with _writing(staging):
        staging.mkdir(parents=True, exist_ok=True)
    jobs = []
    for folder, run_model in _runs_of_part(plan, model):
        for source in plan.chapters:
            # "03_attention_patching", or "seeds/<replicate>/03_attention_patching"
            key = folder + source.stem
            parameters = {"model": run_model, **plan.parameters[source.stem]}
            fp = fingerprint(source, run_model, parameters)
            entry = entries.get(key, {})
            if not plan.force and entry.get("fingerprint", {}).get("key") == fp["key"]:
                # up to date only if what it published is there and whole: its notebook and results
                problem = published_problem(part_dir, key, source.stem)
                if problem is None:
                    say(f"{part}/{key}: up to date (run {entry.get('run_id')}); --force runs it again")
                    continue
                say(f"{part}/{key}: {problem}: running it again")
            with _writing(staging / folder):
                (staging / folder).mkdir(parents=True, exist_ok=True)
            jobs.append(ChapterJob(key, folder, source, parameters, fp))
    if plan.jobs > 1:
        jobs = longest_first(jobs, entries)
    cache_dir = plan.root / "_build" / "cache"
    # --force reads no observation pass cached before (vlmlib.obscache); its chapters share what they
    # compute (the kernels inherit the runner's environment)
    with _cache_refresh(run_id if plan.force else None):
        for job, outcome, seconds in _execute_jobs(
            jobs, part, staging, plan.jobs, plan.shared_kernels, progress, cache_dir
        ):
            if isinstance(outcome, BaseException):
                kept = _keep_failed(
                    staging / f"{job.key}.ipynb", plan.build_dir / "failed" / part / job.folder
                )
                raise ChapterFailed(part, job.key, kept, chapter_error(outcome)) from outcome
            if not job.folder:  # replicates are read for their results, never shown as pages
                with _writing(outcome.parent):
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
    with _writing(staging):
        _merge_unchanged(part_dir, staging)
    present = {
        str(p.relative_to(staging).with_suffix(""))
        for p in staging.rglob("*.ipynb")
        if not any(x.startswith(".") for x in p.relative_to(staging).parts)
    }
    entries = {stem: e for stem, e in entries.items() if stem in present}
    for stem in present - set(entries):
        entries[stem] = {"run_id": None, "note": "from a run before run manifests existed"}
    runs = sorted({e.get("run_id") or "unknown" for e in entries.values()})
    manifest = {
        "part": part,
        "updated": now(),
        "latest_run": run_id,
        "runs": runs,
        "mixed": len(runs) > 1,
        "models": sorted({str(e.get("model")) for e in entries.values()}),
        "chapters": entries,
    }
    with _writing(staging):
        write_json(staging / MANIFEST, manifest)
    with _writing(part_dir.parent):
        _publish(staging, part_dir, state, run_id)
    if len(runs) > 1:
        say(f"{part}: pages now come from {len(runs)} runs ({', '.join(runs)}); see {part_dir / MANIFEST}")
    return done


def _merge_unchanged(part_dir: Path, staging: Path) -> None:
    """The part's other chapters (not asked for, or up to date) come along unchanged, file by file (a
    replicate's folder may hold some chapters from this run and others from an earlier one)."""
    if not part_dir.is_dir():
        return
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


@contextlib.contextmanager
def _writing(folder: Path):
    """The runner's own writes (staging, a page, the manifest, the swap into the book): a full disk or a
    refused write is a `WriteError` naming the folder, as a chapter's own writes are."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(folder, error) from error


@contextlib.contextmanager
def _cache_refresh(name: str | None):
    """While it is held, chapters (their kernels, the workers) refresh the observation cache under `name`
    (`vlmlib.obscache.REFRESH_ENV`); None changes nothing. The runner's environment is restored after."""
    if name is None:
        yield
        return
    before = os.environ.get(CACHE_REFRESH_ENV)
    os.environ[CACHE_REFRESH_ENV] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CACHE_REFRESH_ENV, None)
        else:
            os.environ[CACHE_REFRESH_ENV] = before


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
    """A chapter's error brought back from a worker process (papermill's own errors do not pickle): its
    line, "DatasetError: ..."."""

    def __init__(self, line: str):
        super().__init__(line)
        self.ename, _, self.evalue = line.partition(": ")


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
    the first failure. With n_jobs > 1 the chapters run in forked worker processes (`_Worker`), each
    kernel limited to its share of the CPU cores; when one fails, or the run is interrupted, the others
    are killed with their kernels before the failure is reported. `shared_kernels`: each worker (or the
    runner) runs its chapters in one kernel (`ChapterKernel`); else a kernel per chapter."""
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
    yield from _execute_in_workers(jobs, part, staging, n_jobs, shared_kernels, cache_dir)


# How long the runner waits for a worker that was told to stop (it closes its kernel) before killing it.
WORKER_STOP_SECONDS = 30.0


def _execute_in_workers(jobs, part, staging, n_jobs, shared_kernels, cache_dir):
    """`_execute_jobs` with n_jobs worker processes, owned by the runner: it gives each its next chapter,
    waits on all of them at once (a result, or a worker's death, which fails its chapter), and never
    blocks on a worker: when a chapter fails, or on Ctrl-C or SIGTERM, every worker is killed with its
    kernel (`_kill_workers`) whatever it is doing, and only then is the failure reported."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("fork")
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    waiting = list(jobs)
    workers: list[_Worker] = []
    every_chapter_ran = False
    try:
        for _ in range(min(n_jobs, len(jobs))):
            workers.append(_Worker(context, staging, cache_dir, threads, shared_kernels))
            workers[-1].give(waiting.pop(0), part)
        while any(worker.job for worker in workers):
            busy = [worker for worker in workers if worker.job]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=1.0))
            for worker in busy:
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                job = worker.job
                kind, value, seconds = worker.result()
                if kind != "done":
                    _kill_workers(workers)  # before the runner reports it: nothing runs on, or prints
                    yield job, _WorkerError(value), seconds
                    return
                yield job, Path(value), seconds
                if waiting:
                    worker.give(waiting.pop(0), part)
                else:
                    worker.stop()  # nothing left for it: its kernel's memory goes now
        every_chapter_ran = True
    finally:
        if every_chapter_ran:
            _stop_workers(workers)
        else:
            _kill_workers(workers)


_runner_ends: list = []  # the runner's ends of its workers' pipes (a worker closes the copies it inherits)


class _Worker:
    """A forked process that runs the chapters the runner gives it, one at a time (in one kernel when
    kernels are shared), and sends back ("done", notebook, s) or ("failed", error line, s) for each. The
    runner waits on it only with a timeout, and stops it by killing it and its kernel (`_kill_tree`)."""

    def __init__(self, context, staging: Path, cache_dir: Path, threads: int, shared_kernels: bool):
        self.conn, theirs = context.Pipe()
        _runner_ends.append(self.conn)
        self.process = context.Process(
            target=_worker_main,
            args=(theirs, staging, cache_dir, threads, shared_kernels, os.getpid()),
            name="vlmlib-worker",
            daemon=True,
        )
        self.process.start()
        theirs.close()
        self.job: ChapterJob | None = None
        self.started = 0.0

    def give(self, job: ChapterJob, part: str) -> None:
        _announce(part, job)
        self.job, self.started = job, time.perf_counter()
        with contextlib.suppress(OSError):  # a worker that died: its sentinel says so
            self.conn.send(job)

    def result(self) -> tuple[str, str, float]:
        """Its chapter's outcome, once its pipe or its sentinel is ready; a worker that died without one
        fails the chapter."""
        job, self.job = self.job, None
        with contextlib.suppress(EOFError, OSError):
            if self.conn.poll():
                return self.conn.recv()
        self.process.join(5)
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        line = f"RuntimeError: the worker process running {job.key} died ({how}) before the chapter ended"
        return "failed", line, time.perf_counter() - self.started

    def stop(self) -> None:
        """No more chapters: it closes its kernel and exits."""
        with contextlib.suppress(OSError):
            self.conn.send(None)

    def close(self) -> None:
        self.conn.close()
        with contextlib.suppress(ValueError):
            _runner_ends.remove(self.conn)
        for folder in kernel_dirs(self.process.pid):  # the kernel folders of a killed worker
            shutil.rmtree(folder, ignore_errors=True)


def _stop_workers(workers: list[_Worker]) -> None:
    """Every chapter ran: the workers close their kernels and exit; any still there after
    WORKER_STOP_SECONDS is killed."""
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + WORKER_STOP_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
    _kill_workers(workers)


def _kill_workers(workers: list[_Worker]) -> None:
    """Kill every worker still running with whatever it started (its kernel first), whatever it is doing;
    SIGINT and SIGTERM wait meanwhile, so that a second Ctrl-C cannot leave one behind."""
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        for worker in workers:
            if worker.process.exitcode is None:  # not reaped yet: its pid is still its own
                _kill_tree(worker.process.pid)
        for worker in workers:
            worker.process.join(10)
            worker.close()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _kill_tree(pid: int, root: bool = True) -> None:
    """Kill process `pid` (unless not `root`) and every process it started, without waiting for any: each
    is frozen first (SIGSTOP: none starts another meanwhile), then killed (SIGKILL) with the process group
    it leads, if any (a kernel runs in a session of its own, with whatever it started)."""
    import psutil

    try:
        top = psutil.Process(pid)
    except psutil.Error:
        return
    found, todo = [], [top]
    while todo:
        process = todo.pop()
        with contextlib.suppress(psutil.Error):
            if root or process is not top:
                process.send_signal(signal.SIGSTOP)
            found.append(process)
            todo.extend(process.children())
    ours = os.getpgrp()
    for process in found:
        if process is top and not root:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == process.pid != ours:
                os.killpg(process.pid, signal.SIGKILL)
            process.kill()


_worker_kernel: ChapterKernel | None = None  # in a worker: the kernel its chapters share


def _worker_main(
    conn, staging: Path, cache_dir: Path, threads: int, shared_kernels: bool, runner: int
) -> None:
    """A worker: the runner's chapters one at a time, until it sends None or goes away. Ctrl-C is the
    runner's (it kills the workers); SIGTERM from elsewhere, or the runner's death, kills the worker's
    kernel and ends it (`_worker_sigterm`)."""
    global _worker_kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    _die_with(runner)
    for end in _runner_ends:  # so that the runner's going away ends the others' recv
        end.close()
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernel inherits it: parallel chapters share the cores
    _worker_kernel = ChapterKernel(cache_dir) if shared_kernels else None
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            outcome = _worker_execute(job, staging, cache_dir)
            try:
                conn.send(outcome)
            except OSError:  # the runner is gone (killed): nobody to tell, nothing to print
                return
    finally:
        _close_worker_kernel()


def _die_with(runner: int) -> None:
    """SIGTERM this worker when the runner dies, even by SIGKILL (Linux's parent-death signal), so that no
    orphan runs its chapter on and prints into the terminal; elsewhere the broken pipe ends it later."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != runner:  # the runner died before the signal was set
        _worker_sigterm(signal.SIGTERM, None)


def _worker_sigterm(signum, frame):
    """Raises nothing (raised inside a chapter, asyncio's callbacks would swallow it): kills what the
    worker started (its kernel) and exits."""
    _kill_tree(os.getpid(), root=False)
    for folder in kernel_dirs(os.getpid()):
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(128 + signum)


def _close_worker_kernel() -> None:
    global _worker_kernel
    if _worker_kernel is not None:
        _worker_kernel.close()
        _worker_kernel = None


def _worker_execute(job: ChapterJob, staging: Path, cache_dir: Path) -> tuple[str, str, float]:
    """One chapter in a worker process: ("done", notebook path, s) or ("failed", error line, s)."""
    start = time.perf_counter()
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
    except Exception as error:
        return "failed", chapter_error(error), time.perf_counter() - start
    return "done", str(notebook), time.perf_counter() - start


def _keep_failed(partial: Path, failed_dir: Path) -> Path | None:
    """The failed chapter's notebook, moved from staging into `failed_dir`; None when there is none (a
    notebook that could not be written whole is not left behind) or it cannot be moved."""
    if not partial.is_file():
        return None
    kept = failed_dir / partial.name
    try:
        failed_dir.mkdir(parents=True, exist_ok=True)
        os.replace(partial, kept)
    except OSError as error:
        say(f"{partial.name}: not kept, cannot write {failed_dir}: {error.strerror or error}")
        return None
    return kept


def page_notes(root: Path) -> dict[Path, tuple[str | None, str | None]]:
    """What goes under each built chapter's title: links to the same chapter for the other families (one
    click away) and the side-by-side view, and a note when the part's pages come from different runs."""
    built = {
        part: {nb.stem for nb in (Path(root) / "book" / part).glob("[0-9][0-9]_*.ipynb")}
        for part in book_parts()
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
