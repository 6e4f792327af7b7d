"""Executing one chapter: papermill over a Jupyter kernel, a fresh one or one shared by a worker's chapters.

On the embedded organisms each worker runs its chapters in one kernel (`ChapterKernel`): before its first
chapter `KERNEL_SETUP` records what the kernel's modules look like when freshly imported
(`KERNEL_STATE`), and before each later one `KERNEL_RESET` clears the namespace and puts that state back
(default dtype, RNG states, grad mode, threads, matplotlib settings, ...); what cannot be put back
restarts the kernel. Elsewhere, and with `--kernel-per-chapter`, every chapter gets a fresh kernel. A
training-seed replicate's run stops before the chapter's exercises (`without_exercises`).

Notebooks are written whole or not at all (`_write_atomically`): a write cut short by a full disk or
refused (permission, read-only file system) is a `WriteError` naming the folder, and leaves no truncated
notebook behind.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
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
STATE_MODULE = "vlmlib_kernel_state"
# Run first in a kernel that will run several chapters, before its first (as a cell of its own, removed
# from the executed notebook): `KERNEL_STATE` as a module, which records the state of the modules the
# chapter imports as it imports them.
KERNEL_SETUP = """\
import sys as _sys, types as _types
_state = _types.ModuleType({module!r})
exec(compile({source!r}, {module!r}, "exec"), _state.__dict__)
_sys.modules[_state.__name__] = _state
del _sys, _types, _state
get_ipython().execution_count = 1  # the chapter's first cell is [1], as in a fresh kernel
"""
# Run first in a kernel that has run a chapter before (the same way): what a fresh kernel gives a chapter,
# without starting one. Modules stay imported; their state is put back (`KERNEL_STATE`'s `restore`).
KERNEL_RESET = """\
get_ipython().run_line_magic("reset", "-f")  # the previous chapter's names, In/Out history
__import__("sys").modules[{module!r}].restore({cwd!r})
get_ipython().execution_count = 1  # the chapter's first cell is [1], as in a fresh kernel
"""
RESET_TAG = "vlmlib-kernel-reset"
KERNEL_STATE = r'''
"""What a fresh kernel gives a chapter, put back before each chapter of a kernel that runs several
(vlmlib.book.execute). A module's state is recorded right after its first import in this kernel (a meta
path finder watches for it), so what comes back is what a fresh kernel's chapter sees after importing it."""
import gc
import importlib.util
import os
import random
import sys

TORCH_SEED = 67280421310721  # what torch seeds itself with at import, where it does not use the OS's entropy
fresh = {}  # module name -> its state right after its import
PRINT_OPTIONS = ("precision", "threshold", "edgeitems", "linewidth", "sci_mode")  # torch.set_printoptions


class KernelStateChanged(Exception):
    """A chapter changed something that only a new process undoes: the runner restarts the kernel."""


def torch_state(torch):
    printing = torch._tensor_str.PRINT_OPTS
    deterministic = torch.are_deterministic_algorithms_enabled()
    return {
        "dtype": torch.get_default_dtype(),
        "device": torch.get_default_device() if hasattr(torch, "get_default_device") else None,
        "grad": torch.is_grad_enabled(),
        "anomaly": (torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": (deterministic, torch.is_deterministic_algorithms_warn_only_enabled()),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "print": {k: getattr(printing, k) for k in PRINT_OPTIONS},
        "cudnn": {k: getattr(torch.backends.cudnn, k) for k in ("benchmark", "deterministic", "allow_tf32")},
        "seeded": torch.initial_seed() == TORCH_SEED,
    }


def restore_torch(torch, was):
    now = torch_state(torch)
    if now["interop_threads"] != was["interop_threads"]:
        raise KernelStateChanged(
            f"torch's inter-op threads were set to {now['interop_threads']} (fresh: {was['interop_threads']})"
        )
    if now["dtype"] != was["dtype"]:
        torch.set_default_dtype(was["dtype"])
    if now["device"] != was["device"]:
        torch.set_default_device(None if was["device"].type == "cpu" else was["device"])
    if now["grad"] != was["grad"]:
        torch.set_grad_enabled(was["grad"])
    if now["anomaly"] != was["anomaly"]:
        torch.set_anomaly_enabled(*was["anomaly"])
    if now["threads"] != was["threads"]:
        torch.set_num_threads(was["threads"])
    if now["deterministic"] != was["deterministic"]:
        torch.use_deterministic_algorithms(was["deterministic"][0], warn_only=was["deterministic"][1])
    if now["matmul_precision"] != was["matmul_precision"]:
        torch.set_float32_matmul_precision(was["matmul_precision"])
    if now["print"] != was["print"]:
        torch.set_printoptions(**was["print"])
    for name, value in was["cudnn"].items():
        if now["cudnn"][name] != value:
            setattr(torch.backends.cudnn, name, value)
    # a fresh kernel's generators (CPU and any device's): seeded from the OS, or torch's fixed seed
    if was["seeded"]:
        torch.manual_seed(TORCH_SEED)
    else:
        torch.seed()


def numpy_state(numpy):
    return {"print": numpy.get_printoptions(), "errors": numpy.geterr()}


def restore_numpy(numpy, was):
    if numpy.get_printoptions() != was["print"]:
        numpy.set_printoptions(**was["print"])
    if numpy.geterr() != was["errors"]:
        numpy.seterr(**was["errors"])


def inline_state(backend_inline):
    """When the inline backend loads (its figures shown in the notebook), it sets rc and interactive mode."""
    import matplotlib

    return {"backend": backend(matplotlib), "interactive": matplotlib.is_interactive()}


def backend(matplotlib):
    return dict.__getitem__(matplotlib.rcParams, "backend")  # as set, without resolving it


def restore_matplotlib(matplotlib):
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")
    inline = fresh.get("matplotlib_inline.backend_inline")
    if pyplot is not None and inline is not None and backend(matplotlib) != inline["backend"]:
        pyplot.switch_backend(inline["backend"])
    matplotlib.rc_file_defaults()  # rcParams as read when matplotlib was imported (matplotlibrc, style)
    if inline is not None:
        from matplotlib_inline.config import InlineBackend

        matplotlib.rcParams.update(InlineBackend.instance().rc)
        matplotlib.interactive(inline["interactive"])


WATCHED = {"torch": torch_state, "numpy": numpy_state, "matplotlib_inline.backend_inline": inline_state}


class AfterImport:
    """Records a watched module's state when its first import has run (its loader's exec_module)."""

    def __init__(self, hooks):
        self.hooks = dict(hooks)

    def find_spec(self, name, path=None, target=None):
        hook = self.hooks.pop(name, None)
        if hook is None:
            return None
        spec = importlib.util.find_spec(name)  # the other finders' answer (this one no longer watches it)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module):
            try:
                run(module)
            except BaseException:
                self.hooks[name] = hook  # not imported: watch the next try
                raise
            finally:
                del loader.exec_module
            try:
                fresh[name] = hook(module)
            except Exception:  # an API this version lacks: that module's state is not put back
                pass

        try:
            loader.exec_module = exec_module
        except AttributeError:
            pass
        return spec


for _name, _hook in WATCHED.items():
    if _name in sys.modules:
        try:
            fresh[_name] = _hook(sys.modules[_name])
        except Exception:
            pass
sys.meta_path.insert(0, AfterImport({n: h for n, h in WATCHED.items() if n not in fresh}))


def restore(cwd):
    """Before a chapter: the state each module had when the kernel first imported it (its RNGs reseeded as a
    fresh kernel's are), the chapter's folder as working directory, the previous chapter's objects freed."""
    modules = sys.modules
    if "matplotlib" in modules:
        restore_matplotlib(modules["matplotlib"])
    if "torch" in fresh and "torch" in modules:
        restore_torch(modules["torch"], fresh["torch"])
    if "numpy" in fresh and "numpy" in modules:
        restore_numpy(modules["numpy"], fresh["numpy"])
    if "numpy.random" in modules:
        modules["numpy.random"].seed()  # from the OS, as at import
    random.seed()
    os.chdir(cwd)  # the chapter's folder: its results file lands there
    gc.collect()  # the previous chapter's model, now unreferenced
'''


class WriteError(OSError):
    """A chapter's files could not be written (a full disk, no permission, a read-only file system): the
    folder and the OS's reason, "cannot write <folder>: No space left on device"."""

    def __init__(self, folder: Path, error: OSError, chapter_error: str | None = None):
        super().__init__(error.errno, error.strerror or str(error))
        self.folder = folder
        self.chapter_error = chapter_error  # the chapter's own error, when it had failed before the write

    def __str__(self) -> str:
        text = f"cannot write {self.folder}: {self.strerror}"
        return text + (f" (the chapter had failed: {self.chapter_error})" if self.chapter_error else "")


class ChapterKernel:
    """A Jupyter kernel that runs chapters one after another. On the embedded organisms a chapter's own
    compute takes about a second; starting a kernel, importing torch, transformers and the family's model
    code took about three more, paid once per kernel instead of once per chapter (a part's chapters share
    a family). Before its first chapter `KERNEL_SETUP` runs, before every later one `KERNEL_RESET`; a
    chapter that changed what cannot be put back gets a new kernel (`restart`). `close()` stops the
    kernel."""

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

    def first_cell(self, cwd: Path) -> str:
        """The code run before the next chapter: `KERNEL_SETUP` in a new kernel, else `KERNEL_RESET`."""
        if self.chapters:
            return KERNEL_RESET.format(module=STATE_MODULE, cwd=str(cwd))
        return KERNEL_SETUP.format(module=STATE_MODULE, source=KERNEL_STATE)

    def chapter_done(self) -> None:
        for kc in self.clients:
            kc.stop_channels()
        self.clients.clear()

    def restart(self) -> None:
        """A new kernel for the next chapter (this one's state cannot be put back)."""
        self.close()
        self.dir = _kernel_dir()
        self.chapters = 0

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
    notebook in place, or `WriteError` when a file cannot be written (no notebook left: it would be
    truncated or stale). `exercises=False`: the chapter's exercises section is left out
    (`without_exercises`)."""
    import jupytext
    from papermill.exceptions import PapermillExecutionError

    out_dir = Path(os.path.abspath(out_dir))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(out_dir, error) from error
    notebook = jupytext.read(source)
    # A source without a Jupytext header names no kernel: papermill then refuses it ("No language found").
    notebook.metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
    )
    if not exercises:
        notebook.cells = without_exercises(notebook.cells)
    parameters = {"results": f"{source.stem}.json", **parameters}
    if kernel is None:
        kernel = ChapterKernel(cache_dir)
        try:
            return _execute(notebook, source.stem, out_dir, parameters, kernel, progress, first=None)
        finally:
            kernel.close()
    while True:
        resetting = kernel.chapters > 0
        first = kernel.first_cell(out_dir)
        kernel.chapters += 1
        try:
            return _execute(notebook, source.stem, out_dir, parameters, kernel, progress, first)
        except PapermillExecutionError as error:
            if not resetting or (error.source or "").strip() != first.strip():  # the chapter's own error
                raise
            # The reset could not put back what an earlier chapter changed: a fresh kernel instead.
            print(f"[vlmlib] {source.stem}: new kernel ({error.ename}: {error.evalue})", file=sys.stderr)
            kernel.restart()
        finally:
            kernel.chapter_done()


def _execute(notebook, stem: str, out_dir: Path, parameters: dict, kernel, progress, first: str | None):
    """papermill over `notebook` in `kernel`, `first` run before it as a cell of its own (dropped from the
    executed notebook). A failed write removes the output notebook (cut short, or an earlier state)."""
    import jupytext
    import nbformat
    import papermill

    target = out_dir / f"{stem}.ipynb"
    raw = out_dir / f".{stem}.source.ipynb"
    if first is not None:
        notebook = nbformat.from_dict(notebook)  # a copy: a restarted chapter starts from the source again
        cells = [nbformat.v4.new_code_cell(first, metadata={"tags": [RESET_TAG]})]
        if not any("parameters" in c.get("metadata", {}).get("tags", []) for c in notebook.cells):
            # papermill injects the parameters at the top when no cell is tagged "parameters": after
            # this empty one instead, so that they come after the reset (which would clear them)
            cells.append(nbformat.v4.new_code_cell("", metadata={"tags": [RESET_TAG, "parameters"]}))
        notebook.cells[:0] = cells
    _register_engine()
    executed = []  # the notebook papermill ran: its error, if a write fails after the chapter did
    failed = True
    try:
        _write_atomically(raw, jupytext.writes(notebook, fmt="ipynb"))
        with _atomic_notebook_writes():
            papermill.execute_notebook(
                str(raw),
                str(target),
                parameters=parameters,
                kernel_name="python3",
                cwd=str(out_dir),
                progress_bar=progress,
                km=kernel.manager(),
                engine_name=ENGINE,
                on_notebook=executed.append,
            )
        _drop_reset_cell(target)
        failed = False
    except WriteError as error:
        target.unlink(missing_ok=True)
        error.chapter_error = next(iter(_cell_errors(executed[-1] if executed else None)), None)
        raise
    finally:
        with contextlib.suppress(OSError):
            raw.unlink(missing_ok=True)
        if failed:
            with contextlib.suppress(Exception):  # the chapter's error is the one to show
                _drop_reset_cell(target)
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
    an interruption, still happen, so a failed chapter's partial notebook is kept as before.
    `on_notebook(nb_man)` (an engine argument) is told of the notebook being run."""
    from papermill.engines import NBClientEngine, papermill_engines

    class SaveAtEnd(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_notebook=None, **kwargs):
            if on_notebook is not None:
                on_notebook(nb_man)
            nb_man.save = lambda **kw: None  # shadows the method for the cells only
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            finally:
                del nb_man.save

    papermill_engines.register(ENGINE, SaveAtEnd)


def _write_atomically(path: Path, text: str) -> None:
    """`path` holds `text` whole, or is as it was: written to a hidden file beside it, then renamed over
    it. A failed write (a full disk, no permission) raises WriteError naming the folder."""
    temp = path.with_name(f".{path.name}.partial")
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise WriteError(path.parent, error) from error


@contextlib.contextmanager
def _atomic_notebook_writes():
    """While held, papermill writes local notebooks with `_write_atomically`: a write cut short leaves no
    truncated notebook, and fails as WriteError; the notebook it would have replaced (an earlier state of
    the run) goes too, so that nothing stale is kept as the chapter's notebook."""
    from papermill.iorw import papermill_io

    local = papermill_io.get_handler(os.path.abspath("notebook.ipynb"))

    def write(buf, path):
        path = Path(os.path.abspath(path))
        try:
            _write_atomically(path, buf)
        except WriteError:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise

    own = "write" in vars(local)
    before = vars(local).get("write")
    local.write = write
    try:
        yield
    finally:
        if own:
            local.write = before
        else:
            del local.write


def _cell_errors(nb_man) -> list[str]:
    """The errors ("ValueError: ...") in the cells of the notebook papermill ran."""
    cells = getattr(getattr(nb_man, "nb", None), "cells", [])
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def _drop_reset_cell(notebook: Path) -> None:
    """The executed notebook as a fresh kernel would have left it: without the setup or reset cell."""
    import nbformat

    if not notebook.is_file():
        return
    nb = nbformat.read(notebook, as_version=4)
    kept = [c for c in nb.cells if RESET_TAG not in c.get("metadata", {}).get("tags", [])]
    if len(kept) < len(nb.cells):
        nb.cells = kept
        _write_atomically(notebook, nbformat.writes(nb) + "\n")


def _kernel_dir() -> Path:
    """A private folder for the kernel's connection file and IPC sockets, in the system temp folder (socket
    paths must stay short), named with our pid so that a later run can sweep it if we were SIGKILLed."""
    for stale in Path(tempfile.gettempdir()).glob("vlmlib-k*-*"):
        pid = stale.name[len("vlmlib-k") :].split("-")[0]
        with contextlib.suppress(OSError):  # another process may be sweeping it at the same time
            if pid.isdigit() and not pid_alive(int(pid)) and stale.stat().st_uid == os.getuid():
                shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"vlmlib-k{os.getpid()}-"))


def kernel_dirs(pid: int) -> list[Path]:
    """The kernel folders (`_kernel_dir`) of process `pid`."""
    return list(Path(tempfile.gettempdir()).glob(f"vlmlib-k{pid}-*"))


def _kill_kernel(km) -> None:
    """The kernel and what it started (jupyter_client starts it in a session, a process group, of its own),
    then the manager's sockets: left to the garbage collector, the manager, its zmq context and its
    control socket form a cycle whose collection blocks forever in the context's term() (the socket is
    no longer seen, so never closed)."""
    process = getattr(getattr(km, "provisioner", None), "process", None)
    if process is not None and process.poll() is None:
        with contextlib.suppress(OSError):
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.wait(10)
    with contextlib.suppress(Exception):
        km._close_control_socket()
    if getattr(km, "_created_context", False) and not km.context.closed:
        km.context.destroy(linger=0)


def chapter_error(error: BaseException) -> str:
    """The chapter's own error line ("DatasetError: ..."), not papermill's wrapper. A file that could not
    be written: "OSError: cannot write <folder>: No space left on device"."""
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:
        return f"{ename}: {evalue}" if evalue else ename
    if isinstance(error, WriteError):
        return f"OSError: {error}"
    return f"{type(error).__name__}: {error}"
