"""Executing one chapter: papermill over a Jupyter kernel, a fresh one or one shared by a worker's chapters.

On the embedded organisms each worker runs its chapters in one kernel (`ChapterKernel`), the namespace
cleared before each (`KERNEL_RESET`); elsewhere, and with `--kernel-per-chapter`, every chapter gets a
fresh kernel. A training-seed replicate's run stops before the chapter's exercises (`without_exercises`).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .manifest import pid_alive
from .plan import offline

# The kernel's environment: inline figures (a headless MPLBACKEND=Agg would drop them), no progress bars
# in the notebooks (tqdm.auto's "IProgress not found" warning), no network.
# HF_HUB_OFFLINE is the user's, 1 (no network) when unset. tqdm.auto, imported by transformers and datasets,
# warns "IProgress not found" in any kernel without ipywidgets, whatever TQDM_DISABLE says: filter that one
# message (added to the user's PYTHONWARNINGS).
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "TQDM_DISABLE": "1"}
KERNEL_WARNING_FILTERS = ("ignore:IProgress not found",)
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
        self.env = {
            **os.environ,
            **KERNEL_ENV,
            "HF_HUB_OFFLINE": "1" if offline() else "0",
            "PYTHONWARNINGS": filters,
        }
        if (
            cache_dir is not None
        ):  # one observation pass shared by the chapters that need it (vlmlib.obscache)
            self.env.setdefault("VLMLIB_CACHE", str(cache_dir))
        self.km = None
        self.clients = []
        self.chapters = 0  # chapters started in this kernel

    def manager(self):
        """The kernel manager papermill runs the next chapter with (started by nbclient on first use)."""
        from jupyter_client.manager import AsyncKernelManager

        if self.km is None:
            km = AsyncKernelManager(
                kernel_name="python3",
                transport="ipc",
                ip=str(self.dir / "k"),
                connection_file=str(self.dir / "kernel.json"),
            )
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


def execute_chapter(
    source: Path,
    out_dir: Path,
    parameters: dict,
    kernel: ChapterKernel | None = None,
    progress: bool | dict = False,
    cache_dir: Path | None = None,
    exercises: bool = True,
) -> Path:
    """Convert with jupytext and execute with papermill in `out_dir` (the kernel's working directory; the
    results file lands there), in `kernel` if given (it may have run chapters before), else in a kernel
    of its own. Returns the executed notebook; raises papermill's error on failure, leaving the partial
    notebook in place. `exercises=False`: the chapter's exercises section is left out
    (`without_exercises`)."""
    import jupytext
    import nbformat
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    raw = out_dir / f".{source.stem}.source.ipynb"
    notebook = jupytext.read(source)
    # A source without a Jupytext header names no kernel: papermill then refuses it ("No language found").
    notebook.metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
    )
    if not exercises:
        notebook.cells = without_exercises(notebook.cells)
    own = kernel is None
    kernel = kernel or ChapterKernel(cache_dir)
    if kernel.chapters:
        notebook.cells.insert(
            0,
            nbformat.v4.new_code_cell(
                KERNEL_RESET.format(cwd=str(out_dir.resolve())), metadata={"tags": [RESET_TAG]}
            ),
        )
    kernel.chapters += 1
    jupytext.write(notebook, raw)
    parameters = {"results": f"{source.stem}.json", **parameters}
    _register_engine()
    try:
        papermill.execute_notebook(
            str(raw),
            str(target),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(out_dir),
            progress_bar=progress,
            km=kernel.manager(),
            engine_name=ENGINE,
        )
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
    start = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown" and c.source.lstrip().startswith(EXERCISES_HEADING)
        ),
        None,
    )
    if start is None or any(
        writer in c.source for c in cells[start:] if c.cell_type == "code" for writer in RESULTS_WRITERS
    ):
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
        pid = stale.name[len("vlmlib-k") :].split("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)) and stale.stat().st_uid == os.getuid():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"vlmlib-k{os.getpid()}-"))


def _kill_kernel(km) -> None:
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(10)


def chapter_error(error: BaseException) -> str:
    """The chapter's own error line ("DatasetError: ..."), not papermill's wrapper."""
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    return f"{type(error).__name__}: {error}"
