"""The runner when things go wrong: a chapter failing in one worker while another is mid-chapter (no hang,
its error last), a kernel killed, a chapter that changes a shared kernel's process-wide state, and files
that cannot be written (a full disk, no permission)."""

import asyncio
import contextlib
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import psutil
import pytest
import torch

from vlmlib.book import execute
from vlmlib.book import runner as book
from vlmlib.book.plan import ROOT, make_plan
from vlmlib.book.runner import ChapterFailed, run_plan

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

# A chapter that imports nothing of the library (a kernel starts in about a second): it waits for its
# partner's marker file, then does what its role says; its kernel's pid goes to `pids`.
CHAPTER = """# %% [markdown]
# # {stem}

# %% tags=["parameters"]
model = "paligemma-shapes"
results = "{stem}.json"

# %%
import json, os, pathlib, signal, time
pathlib.Path({pids!r}, "{stem}.pid").write_text(str(os.getpid()))
deadline = time.time() + 30
while {partner!r} and not pathlib.Path({partner!r}).exists() and time.time() < deadline:
    time.sleep(0.02)
pathlib.Path({pids!r}, "{stem}.acted").write_text(str(time.time()))
if {role!r} == "busy":
    pathlib.Path("{stem}.busy").write_text("")
    time.sleep(60)
if {role!r} == "raises":
    raise ValueError("{stem} failed on purpose")
if {role!r} == "dies":
    os.kill(os.getpid(), signal.SIGKILL)
json.dump({{"role": {role!r}}}, open(results, "w"))
"""


def write_chapters(project: Path, roles: dict[str, tuple[str, str]]) -> Path:
    """notebooks/<stem>.py for each stem: (role, partner marker to wait for)."""
    pids = project / "pids"
    shutil.rmtree(pids, ignore_errors=True)
    pids.mkdir()
    for path in (project / "notebooks").glob("*.py"):
        path.unlink()
    for stem, (role, partner) in roles.items():
        text = CHAPTER.format(stem=stem, role=role, partner=partner, pids=str(pids))
        (project / "notebooks" / f"{stem}.py").write_text(text)
    return pids


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setattr("vlmlib.book.runner.replicates", lambda model: [])
    (tmp_path / "notebooks").mkdir()
    return tmp_path


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (rather than hang the test run) when the body takes longer than `seconds`."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    before = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def running(pids) -> list[int]:
    """The processes among `pids` still there (a zombie waiting for init to reap it is gone)."""
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def kernel_folders() -> set[Path]:
    return set(Path("/tmp").glob("vlmlib-k*-*"))


def assert_nothing_left(pids=(), folders: set[Path] | None = None) -> None:
    """No child of the test process, none of `pids` and no kernel folder beyond `folders` is left (of a
    process that is gone: a worker's)."""
    end = time.monotonic() + 5
    while time.monotonic() < end and (running(pids) or psutil.Process().children(recursive=True)):
        time.sleep(0.05)
    assert running(pids) == []
    assert [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE] == []
    for child in psutil.Process().children(recursive=True):
        child.wait(1)
    if folders is not None:  # new ones of processes now gone (other runs may be going on beside the tests)
        owners = {p: int(p.name[len("vlmlib-k") :].split("-")[0]) for p in kernel_folders() - folders}
        assert [p for p, pid in owners.items() if not psutil.pid_exists(pid)] == []


# ---------------------------------------------------------------- a failure while another worker is busy


def stub_chapter(roles: dict, pids: Path):
    """execute_chapter as the workers run it, without a kernel: "busy" starts a stand-in kernel (a process
    in a session of its own, as jupyter_client starts one), ignores SIGTERM and waits in an asyncio loop (as
    nbclient does), in a blocking sleep or on a pipe nobody writes to; "raises" waits until the other is
    busy, then fails."""

    def execute_chapter(source, out_dir, parameters, kernel=None, progress=False, **kwargs):
        role, waiting = roles[source.stem]
        marker = out_dir / "busy.pid"
        if role == "raises":
            end = time.monotonic() + 10
            while not marker.exists() and time.monotonic() < end:
                time.sleep(0.005)
            raise ValueError(f"{source.stem} failed on purpose")
        kernel = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the runner must not need the worker's cooperation
        (pids / "kernel.pid").write_text(str(kernel.pid))
        if waiting == "asyncio":

            async def poll():
                marker.write_text(f"{os.getpid()} {kernel.pid}")  # from inside the running loop
                while True:
                    await asyncio.sleep(0.01)

            asyncio.run(poll())
        marker.write_text(f"{os.getpid()} {kernel.pid}")
        if waiting == "pipe":
            os.read(os.pipe()[0], 1)
        time.sleep(60)

    return execute_chapter


def test_a_failure_while_another_worker_is_busy_ends_the_run_at_once(project, monkeypatch):
    """Two chapters at once (--jobs 2): one fails while the other's worker is mid-chapter, whatever it is
    doing (an asyncio loop, a blocking sleep, blocked on a pipe) and deaf to SIGTERM. 20 times over: the
    run ends within seconds with the failing chapter's error, and the busy worker and its kernel are gone."""
    pids = write_chapters(project, {"01_alpha": ("done", ""), "02_beta": ("done", "")})
    roles = {}
    monkeypatch.setattr(book, "execute_chapter", stub_chapter(roles, pids))
    times = []
    dirs = kernel_folders()
    for i in range(20):
        failing, busy = ("01_alpha", "02_beta") if i % 2 else ("02_beta", "01_alpha")
        roles.clear()
        roles.update({failing: ("raises", ""), busy: ("busy", ("asyncio", "sleep", "pipe")[i % 3])})
        started = time.perf_counter()
        with deadline(20), pytest.raises(ChapterFailed) as failed:
            run_plan(make_plan(root=project, only=["paligemma"], jobs=2, replicates=False), progress=False)
        times.append(time.perf_counter() - started)
        assert failed.value.chapter == failing
        assert failed.value.error == f"ValueError: {failing} failed on purpose"
        assert not (project / "_build" / "runner" / "runs").exists()
        assert not (project / "book" / "paligemma").exists()
        assert_nothing_left([int((pids / "kernel.pid").read_text())], dirs)
    assert max(times) < 5, times


@pytest.mark.parametrize("role", ["raises", "dies"])
def test_a_failing_chapter_or_a_killed_kernel_beside_a_busy_one(project, role):
    """Real kernels, --jobs 2: 01 raises, or kills its own kernel, while 02 sleeps mid-chapter in the other
    worker. The run ends within seconds of it with 01's error; no kernel or worker is left."""
    pids = write_chapters(project, {"01_alpha": (role, "02_beta.busy"), "02_beta": ("busy", "")})
    error = "ValueError: 01_alpha failed on purpose" if role == "raises" else "DeadKernelError: Kernel died"
    folders = kernel_folders()
    for _ in range(int(os.environ.get("N", 3))):
        with deadline(60), pytest.raises(ChapterFailed) as failed:
            run_plan(make_plan(root=project, only=["paligemma"], jobs=2, replicates=False), progress=False)
        ended = time.time()
        assert failed.value.chapter == "01_alpha" and failed.value.error == error
        assert ended - float((pids / "01_alpha.acted").read_text()) < 8
        kernels = [int((pids / f"{stem}.pid").read_text()) for stem in ("01_alpha", "02_beta")]
        assert_nothing_left(kernels, folders)
        for path in pids.iterdir():
            path.unlink()


def test_a_failing_chapter_beside_a_busy_one_is_the_last_line(project):
    """The command line, --jobs 2: the failing chapter's error is the last line, promptly."""
    pids = write_chapters(project, {"01_alpha": ("raises", "02_beta.busy"), "02_beta": ("busy", "")})
    folders = kernel_folders()
    command = [sys.executable, "-m", "vlmlib", "run", "--root", str(project), "--only", "paligemma"]
    command += ["--jobs", "2", "--no-progress", "--no-replicates"]
    done = subprocess.run(command, cwd=project, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "ValueError: 01_alpha failed on purpose"
    assert time.time() - float((pids / "01_alpha.acted").read_text()) < 8
    assert "paligemma/01_alpha failed; its partial notebook: " in done.stderr
    kernels = [int((pids / f"{stem}.pid").read_text()) for stem in ("01_alpha", "02_beta")]
    assert_nothing_left(kernels, folders)


def test_a_worker_that_dies_fails_its_chapter(project, monkeypatch):
    """A worker killed from outside (the OOM killer): its chapter fails with that, the others stop."""
    write_chapters(project, {"01_alpha": ("done", ""), "02_beta": ("done", "")})

    def execute_chapter(source, out_dir, parameters, kernel=None, progress=False, **kwargs):
        if source.stem == "01_alpha":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)

    monkeypatch.setattr(book, "execute_chapter", execute_chapter)
    folders = kernel_folders()
    with deadline(20), pytest.raises(ChapterFailed) as failed:
        run_plan(make_plan(root=project, only=["paligemma"], jobs=2, replicates=False), progress=False)
    assert failed.value.chapter == "01_alpha"
    assert failed.value.error.startswith("RuntimeError: the worker process running 01_alpha died")
    assert "killed by signal 9" in failed.value.error
    assert_nothing_left((), folders)


def test_a_runner_killed_outright_leaves_no_worker_running_or_printing(project):
    """SIGKILL to the runner mid-chapter (--jobs 2): its workers and their kernels end at once, and nothing
    they do afterwards prints into the user's terminal (issue 22: BrokenPipeError tracebacks)."""
    go = project / "go"  # both chapters wait for it: they are mid-chapter when the runner is killed
    pids = write_chapters(project, {"01_alpha": ("done", str(go)), "02_beta": ("done", str(go))})
    command = [sys.executable, "-m", "vlmlib", "run", "--root", str(project), "--only", "paligemma"]
    command += ["--jobs", "2", "--no-progress", "--no-replicates"]
    runner = subprocess.Popen(command, cwd=project, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    while len(list(pids.glob("*.pid"))) < 2 and time.monotonic() < end:
        time.sleep(0.05)
    started = len(list(pids.glob("*.pid"))) == 2
    assert started, runner.stderr.read1().decode() if runner.poll() is not None else "no kernel started"
    workers = [p.pid for p in psutil.Process(runner.pid).children() if "python" in p.name()]
    kernels = [int(path.read_text()) for path in pids.glob("*.pid")]
    runner.kill()
    go.write_text("")  # the chapters could finish now, and their workers would try to report
    runner.wait(10)
    deadline_at = time.monotonic() + 8
    while running(workers + kernels) and time.monotonic() < deadline_at:
        time.sleep(0.05)
    assert running(workers + kernels) == []
    time.sleep(0.5)
    printed = runner.stdout.read().decode() + runner.stderr.read().decode()
    assert "Traceback" not in printed and "BrokenPipe" not in printed, printed
    assert not list(pids.glob("*.acted")) or not (project / "book" / "paligemma").exists()


# ---------------------------------------------------------------- a shared kernel's process-wide state

CHANGER = """# %%
import random
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

torch.set_default_dtype(torch.float64)
torch.set_grad_enabled(False)
torch.set_num_threads(1 if torch.get_num_threads() > 1 else 2)
torch.set_anomaly_enabled(True)
torch.use_deterministic_algorithms(True)
torch.set_float32_matmul_precision("medium")
torch.set_printoptions(precision=1)
torch.backends.cudnn.benchmark = True
torch.manual_seed(0)
np.random.seed(0)
random.seed(0)
np.set_printoptions(precision=2)
np.seterr(all="raise")
plt.style.use("ggplot")
matplotlib.rcParams["lines.linewidth"] = 7
plt.figure()
plt.ioff()
plt.switch_backend("agg")
torch.set_default_device("meta")
leftover = 1
"""

READER = """# %%
import json, os, random
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

figures = plt.get_fignums()  # the figures left open
plt.close(plt.figure())  # the backend loaded (the inline backend sets interactive mode when it loads)
seen = {
    "dtype": str(torch.get_default_dtype()),
    "device": str(torch.tensor([1.0]).device),
    "grad": torch.is_grad_enabled(),
    "threads": torch.get_num_threads(),
    "interop_threads": torch.get_num_interop_threads(),
    "anomaly": torch.is_anomaly_enabled(),
    "deterministic": torch.are_deterministic_algorithms_enabled(),
    "matmul_precision": torch.get_float32_matmul_precision(),
    "cudnn_benchmark": torch.backends.cudnn.benchmark,
    "torch_print": repr(torch.tensor([1 / 3])),
    "numpy_print": repr(np.array([1 / 3])),
    "numpy_errors": np.geterr(),
    "rc": {k: repr(v) for k, v in matplotlib.rcParams.items()},
    "backend": matplotlib.get_backend(),
    "interactive": matplotlib.is_interactive(),
    "figures": figures,
    "names": sorted(k for k in globals() if not k.startswith("_")),
}
draws = {"torch": torch.rand(3).tolist(), "numpy": np.random.rand(3).tolist(), "random": random.random()}
json.dump({"seen": seen, "draws": draws, "pid": os.getpid(), "cwd": os.getcwd()}, open("reader.json", "w"))
"""


def chapter(folder: Path, stem: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.py").write_text(code)
    return folder / f"{stem}.py"


def test_a_shared_kernel_gives_each_chapter_what_a_fresh_kernel_gives(tmp_path):
    """A chapter changes torch's default dtype, device, grad mode, threads, anomaly mode, deterministic
    algorithms, matmul precision, print options and RNGs, numpy's print options, errors and RNG, Python's
    RNG, matplotlib's style, rc, backend, interactive mode and figures. The next chapter in the same kernel
    sees what it sees in a fresh kernel, its random draws unseeded."""
    changer = chapter(tmp_path / "src", "01_changer", CHANGER)
    reader = chapter(tmp_path / "src", "02_reader", READER)
    kernel = execute.ChapterKernel()
    try:
        execute.execute_chapter(changer, tmp_path / "shared", {}, kernel)
        notebook = execute.execute_chapter(reader, tmp_path / "shared", {}, kernel)
    finally:
        kernel.close()
    execute.execute_chapter(reader, tmp_path / "fresh", {})
    shared = json.loads((tmp_path / "shared" / "reader.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "reader.json").read_text())
    assert shared["cwd"] == str(tmp_path / "shared")
    for name, value in fresh["seen"].items():
        assert shared["seen"][name] == value, name
    assert fresh["seen"]["dtype"] == "torch.float32" and fresh["seen"]["figures"] == []  # what was changed
    # seeded with 0 by the changer: a fresh kernel's generators are not
    generator = torch.Generator().manual_seed(0)
    assert not np.allclose(shared["draws"]["torch"], torch.rand(3, generator=generator).tolist())
    assert not np.allclose(shared["draws"]["numpy"], np.random.RandomState(0).rand(3))
    assert shared["draws"]["random"] != random.Random(0).random()
    cells = nbformat.read(notebook, as_version=4).cells
    assert not any(execute.RESET_TAG in c.metadata.get("tags", []) for c in cells)
    assert [c.execution_count for c in cells if c.cell_type == "code"] == [1, 2]  # parameters, code


def test_a_change_that_cannot_be_undone_gets_a_new_kernel(tmp_path):
    """torch's inter-op threads can be set once per process: the next chapter gets a new kernel, which
    shows in its pid, its state and its notebook."""
    changer = chapter(
        tmp_path / "src",
        "01_interop",
        "# %%\nimport json, os, torch\ntorch.set_num_interop_threads(torch.get_num_interop_threads() + 1)\n"
        "json.dump([os.getpid(), torch.get_num_interop_threads()], open('changer.json', 'w'))\n",
    )
    reader = chapter(tmp_path / "src", "02_reader", READER)
    kernel = execute.ChapterKernel()
    try:
        execute.execute_chapter(changer, tmp_path / "out", {}, kernel)
        notebook = execute.execute_chapter(reader, tmp_path / "out", {}, kernel)
        execute.execute_chapter(reader, tmp_path / "again", {}, kernel)  # the new kernel is shared on
    finally:
        kernel.close()
    seen = json.loads((tmp_path / "out" / "reader.json").read_text())
    again = json.loads((tmp_path / "again" / "reader.json").read_text())
    pid, interop_threads = json.loads((tmp_path / "out" / "changer.json").read_text())
    assert seen["pid"] != pid and again["pid"] == seen["pid"]
    assert seen["seen"]["interop_threads"] == interop_threads - 1
    assert again["seen"] == seen["seen"]
    cells = nbformat.read(notebook, as_version=4).cells
    assert [c.execution_count for c in cells if c.cell_type == "code"] == [1, 2]  # parameters, code
    assert not any("KernelStateChanged" in json.dumps(c.get("outputs", [])) for c in cells)


# ---------------------------------------------------------------- files that cannot be written


def failing_open(fails, error_number, after: int = 0, partial: bool = True):
    """`open` for vlmlib.book.execute: writing a file whose path contains `fails` raises OSError(error_number)
    once `after` such writes went through, after writing half of the text (a full disk) or at open."""
    count = {"writes": 0}

    class Cut:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            if partial:
                self.f.write(text[: len(text) // 2])
                self.f.flush()
            raise OSError(error_number, os.strerror(error_number))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" not in mode or fails not in str(path):
            return open(path, mode, *args, **kwargs)
        count["writes"] += 1
        if count["writes"] <= after:
            return open(path, mode, *args, **kwargs)
        if not partial:
            raise OSError(error_number, os.strerror(error_number), str(path))
        return Cut(open(path, mode, *args, **kwargs))

    return fake_open


TINY = '# %% tags=["parameters"]\nfail = False\n\n# %%\nif fail:\n    raise ValueError("it failed")\nx = 1\n'


@pytest.mark.parametrize(
    "error_number, partial", [(errno.ENOSPC, True), (errno.EACCES, False), (errno.EROFS, False)]
)
def test_a_notebook_that_cannot_be_written_is_an_error_naming_the_folder(
    tmp_path, monkeypatch, error_number, partial
):
    """papermill's first write of the notebook is cut short by a full disk (or refused): the error names
    the folder and the reason, and no notebook (truncated) or temporary file is left. No kernel starts."""
    source = chapter(tmp_path / "src", "01_tiny", TINY)
    out = tmp_path / "out"
    monkeypatch.setattr(
        execute, "open", failing_open("01_tiny.ipynb", error_number, 0, partial), raising=False
    )
    with pytest.raises(execute.WriteError) as failed:
        execute.execute_chapter(source, out, {})
    reason = os.strerror(error_number)
    assert str(failed.value) == f"cannot write {out}: {reason}"
    assert execute.chapter_error(failed.value) == f"OSError: cannot write {out}: {reason}"
    assert list(out.iterdir()) == []


def test_a_write_cut_after_the_chapter_failed_says_both(tmp_path, monkeypatch):
    """The chapter ran (and failed), then the disk filled up: the error is the write's, naming the folder,
    with the chapter's own; the notebook written at the start (now stale) is not left either."""
    source = chapter(tmp_path / "src", "01_tiny", TINY)
    out = tmp_path / "out"
    monkeypatch.setattr(execute, "open", failing_open("01_tiny.ipynb", errno.ENOSPC, after=1), raising=False)
    with pytest.raises(execute.WriteError) as failed:
        execute.execute_chapter(source, out, {"fail": True})
    assert str(failed.value) == (
        f"cannot write {out}: No space left on device (the chapter had failed: ValueError: it failed)"
    )
    assert list(out.iterdir()) == []


def test_a_run_whose_notebook_cannot_be_written_keeps_nothing(project, monkeypatch):
    """Through the runner: the chapter's error is the write's, and no notebook is kept as the failed one."""
    write_chapters(project, {"01_alpha": ("done", "")})
    monkeypatch.setattr(execute, "open", failing_open("01_alpha.ipynb", errno.ENOSPC), raising=False)
    with pytest.raises(ChapterFailed) as failed:
        run_plan(make_plan(root=project, only=["paligemma"], replicates=False), progress=False)
    staging = project / "_build" / "runner" / "runs"
    assert re.fullmatch(
        rf"OSError: cannot write {staging}/[\w-]+/paligemma: No space left on device", failed.value.error
    )
    assert failed.value.notebook is None
    assert not list((project / "_build").rglob("*.ipynb*")) and not staging.exists()


def test_a_failed_notebook_that_cannot_be_kept_is_said(project, monkeypatch, capsys):
    """The folder for failed notebooks cannot be written: the run still ends with the chapter's error."""
    write_chapters(project, {"01_alpha": ("done", "")})

    def execute_chapter(source, out_dir, parameters, kernel=None, progress=False, **kwargs):
        (out_dir / f"{source.stem}.ipynb").write_text("{}")  # the partial notebook papermill leaves
        raise ValueError("it failed")

    monkeypatch.setattr(book, "execute_chapter", execute_chapter)
    (project / "_build").mkdir()
    (project / "_build" / "failed").write_text("a file where the folder should be")
    with pytest.raises(ChapterFailed) as failed:
        run_plan(make_plan(root=project, only=["paligemma"], replicates=False), progress=False)
    assert failed.value.error == "ValueError: it failed" and failed.value.notebook is None
    assert f"01_alpha.ipynb: not kept, cannot write {project / '_build' / 'failed' / 'paligemma'}" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("step", ["manifest", "swap"])
def test_the_runners_own_writes_name_their_folder(project, monkeypatch, step):
    """The chapter ran; then the part's manifest cannot be written (a full disk), or the part cannot be
    swapped into the book (a read-only file system): a WriteError naming the folder, nothing published,
    no staging left."""
    write_chapters(project, {"01_alpha": ("done", "")})
    if step == "manifest":

        def write_json(path, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        monkeypatch.setattr(book, "write_json", write_json)
    else:
        real_replace = os.replace

        def replace(src, dst):  # only the swap into the book is refused
            if Path(dst) == project / "book" / "paligemma":
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(execute.WriteError) as failed:
        run_plan(make_plan(root=project, only=["paligemma"], replicates=False), progress=False)
    staging = project / "_build" / "runner" / "runs"
    if step == "manifest":
        expected = rf"cannot write {staging}/[\w-]+/paligemma: No space left on device"
        assert re.fullmatch(expected, str(failed.value))
    else:
        assert str(failed.value) == f"cannot write {project / 'book'}: Read-only file system"
    assert not (project / "book" / "paligemma").exists() and not staging.exists()


def test_a_book_folder_that_cannot_be_made_is_the_last_line(project):
    """The command line: `book` is a file where the part's folder should go; the run ends with the write's
    error naming the folder, exit code 1."""
    write_chapters(project, {"01_alpha": ("done", "")})
    (project / "book").write_text("not a folder")
    command = [sys.executable, "-m", "vlmlib", "run", "--root", str(project), "--only", "paligemma"]
    done = subprocess.run(
        command + ["--no-progress", "--no-replicates"], cwd=project, env=ENV, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"OSError: cannot write {project / 'book'}: File exists"
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def mounted(folder: Path, options: str):
    """A tmpfs at `folder` (root only); skips the test where mounting is not allowed."""
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_real_full_disk_and_a_read_only_one(tmp_path):
    """A real file system: a 256 KiB tmpfs that the chapter's output fills, and a read-only one."""
    big = chapter(tmp_path / "src", "01_big", "# %%\nprint('x' * 1_000_000)\n")
    with mounted(tmp_path / "small", "size=256k") as small:
        with pytest.raises(execute.WriteError) as failed:
            execute.execute_chapter(big, small / "out", {})
        assert str(failed.value) == f"cannot write {small / 'out'}: No space left on device"
        assert list((small / "out").iterdir()) == []
    with mounted(tmp_path / "readonly", "ro,size=64k") as readonly:
        with pytest.raises(execute.WriteError) as failed:
            execute.execute_chapter(big, readonly / "out", {})
        assert str(failed.value) == f"cannot write {readonly / 'out'}: Read-only file system"


def test_a_closed_kernel_leaves_nothing_that_blocks_the_garbage_collector(tmp_path):
    """Two chapters in kernels of their own, in one process, then a garbage collection: it returns (a
    kernel manager left with its zmq context and control socket open made it block forever, at any
    automatic collection in a --jobs 1 run or at the end of the test run)."""
    source = chapter(tmp_path / "src", "01_tiny", TINY)
    script = (
        "import gc, sys\nfrom pathlib import Path\nfrom vlmlib.book.execute import execute_chapter\n"
        f"for out in ('a', 'b'):\n"
        f"    execute_chapter(Path({str(source)!r}), Path({str(tmp_path)!r}, out), {{}})\n"
        "gc.collect()\nprint('collected')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "collected", done.stderr[-2000:]
