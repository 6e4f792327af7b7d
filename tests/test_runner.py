"""The book runner (`python -m vlmlib`): checked arguments, the user's paths, staged parts that never mix
runs silently, resume, a run lock, interruptions, and a failing chapter's error as the last line."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from vlmlib.book import execute, plan
from vlmlib.book import manifest as manifests
from vlmlib.book import runner as book
from vlmlib.book.cli import main
from vlmlib.book.manifest import read_manifest
from vlmlib.book.plan import ROOT, UsageError, make_plan
from vlmlib.book.runner import ChapterFailed, run_plan

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

# ---------------------------------------------------------------- arguments, checked before anything runs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(models=["paligema=X"]), r"unknown part 'paligema' \(did you mean 'paligemma'\?\)"),
        (
            dict(models=["qwen2vl=paligemma-shapes"]),
            r"that is a paligemma model.*use --model paligemma=paligemma-shapes",
        ),
        (dict(models=["paligemma-shapes"]), r"write PART=MODEL"),
        (dict(only=["unknown"]), r"--only unknown: unknown part; parts: paligemma, qwen2vl"),
        (dict(parameters=[("n_sample", "2")]), r"-p n_sample: no chapter selected.*did you mean 'n_samples'"),
        (dict(parameters=[("n_samples", "abc")]), r"'n_samples' should be an integer, got 'abc'"),
        (dict(parameters=[("seed", "abc")]), r"'seed' should be an integer"),
        (dict(parameters=[("seed", "-1")]), r"'seed' should be at least 0, got -1"),
        (
            dict(chapter_selection=["01"], parameters=[("directions", "early->mid")]),
            r"'directions'.*parameter of 03_attention_patching, not selected",
        ),
        (dict(parameters=[("model", "x")]), r"runner sets 'model' itself; use --model"),
        (dict(parameters=[("results", "x.json")]), r"runner sets 'results' itself; use --out"),
        (dict(chapter_selection=["99"]), r"no chapter matches \['99'\]"),
        (dict(models=["paligemma=./no-such-folder"]), r"no such folder \(tried /"),
        (dict(parameters=[("device", "gpu")]), r"-p device=gpu: unknown device 'gpu'; use one of auto, cpu"),
        (dict(parameters=[("dtype", "fp16")]), r"-p dtype=fp16: unknown dtype 'fp16'; use auto, float32"),
    ],
)
def test_bad_arguments_are_errors_that_name_them(kwargs, message):
    with pytest.raises(UsageError, match=message):
        make_plan(**kwargs)


def test_a_gpu_this_machine_lacks_is_refused_before_anything_runs(monkeypatch):
    """`-p device=cuda` on a machine without CUDA: the plan refuses it (issue 25), not the kernel later."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        UsageError, match=r"-p device=cuda: device='cuda' was asked for but torch sees no CUDA"
    ):
        make_plan(parameters=[("device", "cuda")])
    assert make_plan(chapter_selection=["01"], parameters=[("device", "cpu")]).parameters


def test_paths_are_the_users_and_the_family_comes_from_config(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    monkeypatch.chdir(tmp_path)
    plan = make_plan(
        chapter_selection=["01"],
        only=["qwen2vl"],
        models=["qwen2vl=ckpt/"],
        out="pages",
        parameters=[("dataset", "data")],
    )
    assert plan.parts == {"qwen2vl": str(tmp_path / "ckpt")}
    assert plan.parameters["01_representations"]["dataset"] == str(tmp_path / "data")
    assert plan.out == tmp_path / "pages" and plan.build_dir == tmp_path / "pages" / ".vlmlib"
    with pytest.raises(UsageError, match=r"that is a qwen2vl model.*use --model qwen2vl="):
        make_plan(models=["paligemma=ckpt"])
    with pytest.raises(UsageError, match=f"dataset=mydata: no such folder \\(tried {tmp_path / 'mydata'}\\)"):
        make_plan(parameters=[("dataset", "mydata")])
    # inside the project: never a source
    assert make_plan(chapter_selection=["01"]).build_dir == ROOT / "_build"


def test_parameters_as_typed_go_only_to_chapters_that_take_them():
    plan = make_plan(
        chapter_selection=["01", "03"],
        parameters=[("directions", "early->mid,late->mid"), ("positions", "vision"), ("n_samples", "3")],
    )
    assert plan.parameters["03_attention_patching"]["directions"] == ["early->mid", "late->mid"]
    assert plan.parameters["03_attention_patching"]["positions"] == ["vision"]
    assert plan.parameters["01_representations"] == {"n_samples": 3}


def test_parameters_cell_types_from_defaults_and_annotations(tmp_path):
    source = tmp_path / "01_x.py"
    source.write_text(
        '# %% tags=["parameters"]\nn = 3  # how many\ngroups: str | dict = "scaled"\n'
        'layer = None\ndirections = ["a",\n  "b"]  # pairs\n\n# %%\nprint(n)\n'
    )
    params = plan.chapter_parameters(source)
    assert params["n"].types == (int,) and params["n"].comment == "how many"
    assert set(params["groups"].types) == {str, dict} and params["layer"].types == ()
    assert params["directions"].default == ["a", "b"] and params["directions"].comment == "pairs"


def test_cli_help_and_list(capsys):
    for command in ("run", "book", "build", "list"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model PART=MODEL",
        "--only",
        "-p NAME=VALUE",
        "--out",
        "--force",
        "--no-html",
        "run-manifest.json",
    ):
        assert option in text, option
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "paligemma: paligemma-shapes" in listing and "directions = ['early->mid'" in listing
    assert "03_attention_patching:" in listing and "n_samples = " in listing
    assert main(["run", "--only", "nothing"]) == 2
    assert "unknown part" in capsys.readouterr().err


# ---------------------------------------------------------------- staging, manifest, resume, lock (no kernel)


CHAPTER = """# %% [markdown]
# # {n}. {title}

# %% tags=["parameters"]
model = "paligemma-shapes"
dataset = "shapes"
n_samples = 2
seed = 0
results = "{stem}.json"
wait = 0.0  # seconds to sleep (for the interruption test)
fail = False
{extra}
# %%
import os
import time
from vlmlib.data import load_samples
from vlmlib.util import write_json as write_results
fresh = "leftover" not in globals()  # a kernel shared with an earlier chapter must not show its names
time.sleep(wait)
samples = load_samples(dataset, n_samples, seed=seed)
if fail:
    raise ValueError("{stem} failed on purpose")
write_results(results, {{"model": model, "n": len(samples), "dataset": dataset, "fresh": fresh}})
with open("{stem}.kernel", "w") as f:  # which kernel ran the chapter
    f.write(str(os.getpid()))
leftover = True
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with two tiny chapters (no model: they load samples and write results). In-process runs
    see no training-seed replicates unless a test gives some (test_replicates_run_beside_the_pages)."""
    monkeypatch.setattr("vlmlib.book.runner.replicates", lambda model: [])
    (tmp_path / "notebooks").mkdir()
    for n, title, extra in ((1, "Alpha", ""), (2, "Beta", 'directions = ["early->mid"]\n')):
        stem = f"0{n}_{title.lower()}"
        (tmp_path / "notebooks" / f"{stem}.py").write_text(
            CHAPTER.format(n=n, title=title, stem=stem, extra=extra)
        )
    return tmp_path


def fake_execute(log):
    def execute(source, out_dir, parameters, kernel=None, progress=False, cache_dir=None, exercises=True):
        assert cache_dir is not None and cache_dir.name == "cache"  # chapters share one observation cache
        # a replicate's run needs only its results: the exercises are left out there, and only there
        assert exercises == (parameters["model"] == "paligemma-shapes"), (source.stem, parameters["model"])
        if parameters.get("fail"):
            (out_dir / f"{source.stem}.ipynb").write_text("{}")  # the partial notebook papermill leaves
            raise RuntimeError(f"{source.stem} failed on purpose")
        log.append((source.stem, parameters))
        nb = nbformat.v4.new_notebook(
            cells=[
                nbformat.v4.new_markdown_cell(f"# {source.stem}"),
                nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
            ]
        )
        nbformat.write(nb, out_dir / f"{source.stem}.ipynb")
        (out_dir / f"{source.stem}.json").write_text(json.dumps(parameters))
        return out_dir / f"{source.stem}.ipynb"

    return execute


def test_parts_are_staged_merged_resumed_and_say_when_they_mix_runs(project, monkeypatch):
    log = []
    monkeypatch.setattr(book, "execute_chapter", fake_execute(log))
    part = project / "book" / "paligemma"
    run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    assert [stem for stem, _ in log] == ["01_alpha", "02_beta"]
    manifest = read_manifest(part)
    assert set(manifest["chapters"]) == {"01_alpha", "02_beta"} and manifest["mixed"] is False
    assert manifests.describe_manifest(manifest) is None
    # prepared for the book
    assert nbformat.read(part / "01_alpha.ipynb", 4).cells[0].source == "# 01_alpha — PaliGemma"
    assert not (project / "_build" / "runner" / "runs").exists()  # no staging left

    log.clear()
    run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    assert log == []  # same parameters, code and model: resumed, nothing ran
    run_plan(
        make_plan(root=project, only=["paligemma"], chapter_selection=["02"], force=True), progress=False
    )
    assert [stem for stem, _ in log] == ["02_beta"]

    log.clear()
    run_plan(
        make_plan(
            root=project, only=["paligemma"], chapter_selection=["01"], parameters=[("n_samples", "3")]
        ),
        progress=False,
    )
    assert log == [("01_alpha", {"model": "paligemma-shapes", "n_samples": 3})]  # changed parameters: runs
    manifest = read_manifest(part)
    assert manifest["mixed"] is True and len(manifest["runs"]) == 2
    assert manifest["chapters"]["01_alpha"]["parameters"]["n_samples"] == 3
    assert manifest["chapters"]["02_beta"]["run_id"] != manifest["chapters"]["01_alpha"]["run_id"]
    assert "come from different runs" in manifests.describe_manifest(manifest)
    assert {p.name for p in part.iterdir()} == {
        "01_alpha.ipynb",
        "01_alpha.json",
        "02_beta.ipynb",
        "02_beta.json",
        "run-manifest.json",
    }


def test_replicates_run_beside_the_pages_resume_and_merge(project, monkeypatch):
    """A part on an organism with training-seed replicates also runs every chapter on each replicate, into
    <part>/seeds/<replicate>/ (not pages); they resume and merge like the pages, and never count as a
    second model or run in the pages' note."""
    log = []
    monkeypatch.setattr(book, "execute_chapter", fake_execute(log))
    monkeypatch.setattr("vlmlib.book.runner.replicates", lambda model: [f"{model}-seed1", f"{model}-seed2"])
    part = project / "book" / "paligemma"
    run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    assert [(stem, p["model"]) for stem, p in log] == [
        ("01_alpha", "paligemma-shapes"),
        ("02_beta", "paligemma-shapes"),
        ("01_alpha", "paligemma-shapes-seed1"),
        ("02_beta", "paligemma-shapes-seed1"),
        ("01_alpha", "paligemma-shapes-seed2"),
        ("02_beta", "paligemma-shapes-seed2"),
    ]
    for seed in (1, 2):
        folder = part / "seeds" / f"paligemma-shapes-seed{seed}"
        assert json.loads((folder / "02_beta.json").read_text())["model"] == f"paligemma-shapes-seed{seed}"
        # not prepared as a page: no family suffix added to its title
        assert nbformat.read(folder / "01_alpha.ipynb", 4).cells[0].source == "# 01_alpha"
    manifest = read_manifest(part)
    assert set(manifest["chapters"]) == {
        "01_alpha",
        "02_beta",
        *(f"seeds/paligemma-shapes-seed{s}/{c}" for s in (1, 2) for c in ("01_alpha", "02_beta")),
    }
    assert manifests.describe_manifest(manifest) is None  # the replicates' models are not "different models"
    assert manifests.built_parts(project / "book") == {"paligemma": "paligemma-shapes"}

    log.clear()
    run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    assert log == []  # everything up to date, the replicates too
    run_plan(
        make_plan(
            root=project,
            only=["paligemma"],
            chapter_selection=["02"],
            parameters=[("directions", "late->mid")],
        ),
        progress=False,
    )
    assert [(stem, p["model"]) for stem, p in log] == [
        ("02_beta", "paligemma-shapes"),
        ("02_beta", "paligemma-shapes-seed1"),
        ("02_beta", "paligemma-shapes-seed2"),
    ]
    # the replicates' other chapter came along (merged file by file)
    assert (part / "seeds" / "paligemma-shapes-seed1" / "01_alpha.json").is_file()
    log.clear()
    run_plan(
        make_plan(root=project, only=["paligemma"], chapter_selection=["01"], force=True, replicates=False),
        progress=False,
    )
    assert [p["model"] for _, p in log] == ["paligemma-shapes"]  # --no-replicates
    assert (part / "seeds" / "paligemma-shapes-seed2" / "01_alpha.json").is_file()  # kept from before


def test_a_failed_replicate_publishes_nothing_and_names_itself(project, monkeypatch):
    def execute(source, out_dir, parameters, **kwargs):
        if parameters["model"].endswith("seed1"):
            (out_dir / f"{source.stem}.ipynb").write_text("{}")
            raise RuntimeError("replicate failed")
        return fake_execute([])(source, out_dir, parameters, **kwargs)

    monkeypatch.setattr(book, "execute_chapter", lambda s, o, p, *a, **k: execute(s, o, p, **k))
    monkeypatch.setattr("vlmlib.book.runner.replicates", lambda model: [f"{model}-seed1"])
    with pytest.raises(ChapterFailed) as failed:
        run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    assert failed.value.chapter == "seeds/paligemma-shapes-seed1/01_alpha"
    assert (
        failed.value.notebook
        == project / "_build" / "failed" / "paligemma" / "seeds" / "paligemma-shapes-seed1" / "01_alpha.ipynb"
    )
    assert not (project / "book" / "paligemma").exists()  # the part is published only when all of it ran


def test_a_failed_chapter_publishes_nothing_and_keeps_its_notebook_outside_the_book(project, monkeypatch):
    monkeypatch.setattr(book, "execute_chapter", fake_execute([]))
    run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    part = project / "book" / "paligemma"
    before = {p.name: p.read_bytes() for p in part.iterdir()}
    with pytest.raises(ChapterFailed) as failed:
        run_plan(
            make_plan(root=project, only=["paligemma"], parameters=[("fail", "True"), ("n_samples", "1")]),
            progress=False,
        )
    assert failed.value.part == "paligemma" and failed.value.chapter == "01_alpha"
    assert failed.value.notebook == project / "_build" / "failed" / "paligemma" / "01_alpha.ipynb"
    assert failed.value.notebook.is_file() and "failed on purpose" in failed.value.error
    assert {p.name: p.read_bytes() for p in part.iterdir()} == before
    assert not (project / "_build" / "runner" / "runs").exists()


def test_one_run_at_a_time_and_dead_runs_are_cleaned_up(project, monkeypatch):
    monkeypatch.setattr(book, "execute_chapter", fake_execute([]))
    state = project / "_build" / "runner"
    state.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (state / "lock").write_text(json.dumps({"pid": sleeper.pid, "started": "earlier"}))
        with pytest.raises(UsageError, match=f"another run \\(pid {sleeper.pid}"):
            run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    # Its pid is dead now (as after SIGKILL): the lock is taken over, and its leftovers go.
    (state / "runs" / "old" / "paligemma").mkdir(parents=True)
    (state / "runs" / "old" / "paligemma" / "01_alpha.ipynb").write_text("{}")
    (project / "book").mkdir()
    (state / "swap-qwen2vl-old").mkdir()  # killed between the two renames of a swap: the old part comes back
    (state / "swap-qwen2vl-old" / "01_alpha.ipynb").write_text("{}")
    run_plan(make_plan(root=project, only=["paligemma"]), progress=False)
    assert not (state / "lock").exists() and not (state / "runs").exists()
    assert (project / "book" / "qwen2vl" / "01_alpha.ipynb").is_file() and not (
        state / "swap-qwen2vl-old"
    ).exists()


# ---------------------------------------------------------------- real kernels, from another directory


def cli(args, cwd, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "vlmlib", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_run_from_another_directory_into_a_chosen_folder(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    done = cli(
        ["run", "--root", str(project), "--only", "paligemma", "--out", "pages", "--no-progress"], elsewhere
    )
    assert done.returncode == 0, done.stderr
    part = elsewhere / "pages" / "paligemma"
    results = json.loads((part / "01_alpha.json").read_text())
    assert results == {"model": "paligemma-shapes", "n": 2, "dataset": "shapes", "fresh": True}
    assert stat.S_IMODE((part / "01_alpha.json").stat().st_mode) == 0o644  # readable like the notebooks
    assert stat.S_IMODE((part / "01_alpha.ipynb").stat().st_mode) == 0o644
    for noise in ("without encryption", "IProgress", "Traceback"):
        assert noise not in done.stderr, done.stderr
    assert not list(Path("/tmp").glob(f"vlmlib-k{os.getpid()}-*"))


def test_failing_chapter_error_is_the_last_line(project, tmp_path_factory):
    broken = project / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not an image")
    (broken / "metadata.jsonl").write_text('{"file_name": "a.png", "caption": "x"}\n')
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    done = cli(
        ["run", "--root", str(project), "--only", "paligemma", "-p", "dataset", str(broken), "--no-progress"],
        elsewhere,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("DatasetError: ") and "a.png is not a readable image" in lines[-1]
    # every chapter fails; with chapters running at once (--jobs auto) any may be the first, a training-seed
    # replicate's too ("seeds/paligemma-shapes-seed1/01_alpha")
    failed = re.search(r"paligemma/([\w/.-]+) failed; its partial notebook: (\S+)", done.stderr)
    assert failed and Path(failed[1]).name in ("01_alpha", "02_beta"), done.stderr
    kept = project / "_build" / "failed" / "paligemma" / f"{failed[1]}.ipynb"
    assert failed[2] == str(kept) and kept.is_file()
    # the partial notebook holds the cells that ran and the error (written at the end, not per cell)
    cells = nbformat.read(kept, as_version=4).cells
    assert any(o.get("ename") == "DatasetError" for c in cells if c.cell_type == "code" for o in c.outputs)
    assert not (project / "book" / "paligemma").exists()


def _kernels() -> set[str]:
    """Kernel processes the runner started (their connection files live in vlmlib-k<pid>-* folders)."""
    found = subprocess.run(["pgrep", "-f", "vlmlib-k[0-9]"], capture_output=True, text=True).stdout.split()
    return set(found)


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interruption_leaves_nothing_behind(project, signum, code, jobs):
    """Also with chapters in worker processes (--jobs 2): no kernel, staging folder or lock stays."""
    before = _kernels()
    command = [
        sys.executable,
        "-m",
        "vlmlib",
        "run",
        "--root",
        str(project),
        "--only",
        "paligemma",
        "-p",
        "wait",
        "60",
        "--no-progress",
        "--jobs",
        jobs,
    ]
    # A shell running the tests in the background ignores SIGINT, and children inherit that: restore it,
    # as in an interactive terminal.
    process = subprocess.Popen(
        command,
        cwd=project,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    runs = project / "_build" / "runner" / "runs"
    deadline = time.time() + 120
    while (
        not list(runs.glob("*/paligemma/01_alpha.ipynb")) and time.time() < deadline
    ):  # the kernel is running
        time.sleep(0.5)
    time.sleep(2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code and "interrupted" in err.strip().splitlines()[-1]
    assert (
        not (project / "book").exists()
        and not runs.exists()
        and not (project / "_build" / "runner" / "lock").exists()
    )
    assert not list(Path("/tmp").glob(f"vlmlib-k{process.pid}-*"))
    deadline = time.time() + 15  # a worker's orphaned kernel notices its parent is gone within seconds
    while _kernels() - before and time.time() < deadline:
        time.sleep(0.5)
    assert not _kernels() - before


def test_jobs_are_checked_and_auto_runs_one_chapter_at_a_time_on_a_checkpoint():
    assert plan.resolve_jobs("auto", ["paligemma-shapes", "qwen2vl-shapes"]) == min(4, os.cpu_count())
    assert plan.resolve_jobs("auto", ["paligemma-shapes", "google/paligemma-3b-pt-448"]) == 1
    assert plan.resolve_jobs("3", ["org/x"]) == 3
    with pytest.raises(UsageError, match="--jobs 0: at least 1"):
        plan.resolve_jobs("0", [])
    with pytest.raises(UsageError, match="--jobs 'many'"):
        plan.resolve_jobs("many", [])


def test_chapters_at_once_give_the_same_pages(project, tmp_path_factory):
    """--jobs 2 and --jobs 1: the same results files, every chapter in the manifest."""
    out = {}
    for jobs in ("1", "2"):
        elsewhere = tmp_path_factory.mktemp(f"jobs{jobs}")
        done = cli(
            [
                "run",
                "--root",
                str(project),
                "--only",
                "paligemma",
                "--out",
                "pages",
                "--no-progress",
                "--no-replicates",
                "--jobs",
                jobs,
            ],
            elsewhere,
        )
        assert done.returncode == 0, done.stderr
        part = elsewhere / "pages" / "paligemma"
        out[jobs] = {p.name: p.read_text() for p in part.glob("*.json") if p.name != manifests.MANIFEST}
        assert set(read_manifest(part)["chapters"]) == {"01_alpha", "02_beta"}
    assert out["1"] == out["2"] and len(out["1"]) == 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_chapters_sharing_a_kernel_see_what_a_fresh_kernel_gives(project, tmp_path_factory, jobs):
    """On the organisms a kernel runs chapters one after another (its names cleared in between, its
    working folder the chapter's); --kernel-per-chapter starts one per chapter. Same results, same
    notebooks (no trace of the reset cell, counts from 1)."""
    project.joinpath("notebooks", "03_gamma.py").write_text(
        CHAPTER.format(n=3, title="Gamma", stem="03_gamma", extra="")
    )
    seen = {}
    for how in ("shared", "per-chapter"):
        elsewhere = tmp_path_factory.mktemp(how)
        flags = ["--kernel-per-chapter"] if how == "per-chapter" else []
        done = cli(
            [
                "run",
                "--root",
                str(project),
                "--only",
                "paligemma",
                "--out",
                "pages",
                "--no-progress",
                "--jobs",
                jobs,
                *flags,
            ],
            elsewhere,
        )
        assert done.returncode == 0, done.stderr
        part = elsewhere / "pages" / "paligemma"
        stems = ("01_alpha", "02_beta", "03_gamma")
        seen[how] = {stem: json.loads((part / f"{stem}.json").read_text()) for stem in stems}
        kernels = {(part / f"{stem}.kernel").read_text() for stem in stems}
        # three chapters on `jobs` workers: a kernel each, or at most one per worker
        assert len(kernels) == 3 if how == "per-chapter" else len(kernels) <= int(jobs)
        for stem in stems:
            nb = nbformat.read(part / f"{stem}.ipynb", as_version=4)
            assert not any(execute.RESET_TAG in c.metadata.get("tags", []) for c in nb.cells)
            counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
            assert counts == list(range(1, len(counts) + 1)), (stem, counts)
    assert seen["shared"] == seen["per-chapter"]
    assert all(r["fresh"] for r in seen["shared"].values())


def test_a_replicate_run_leaves_the_exercises_out(project, tmp_path):
    """What a training-seed replicate runs: the chapter up to its exercises (the results file is written
    before them); a chapter that writes results after its exercises keeps them."""
    exercise = (
        '\n# %% [markdown]\n# ## Exercises\n#\n# 1. Try it.\n\n# %% tags=["hide-cell"]\n'
        'open("exercise-ran", "w").close()\n'
    )
    source = project / "notebooks" / "01_alpha.py"
    source.write_text(source.read_text() + exercise)
    for exercises in (True, False):
        out = tmp_path / str(exercises)
        notebook = book.execute_chapter(source, out, {"n_samples": 2}, exercises=exercises)
        cells = nbformat.read(notebook, as_version=4).cells
        assert (out / "exercise-ran").exists() == exercises
        assert any("## Exercises" in c.source for c in cells) == exercises
        assert json.loads((out / "01_alpha.json").read_text())["n"] == 2
    late = nbformat.v4.new_code_cell("write_results(results, {})")
    cells = [nbformat.v4.new_markdown_cell("## Exercises"), late]
    assert execute.without_exercises(cells) == cells  # results written after the exercises: keep them all


def test_a_real_chapter_on_the_organism(tmp_path):
    """Chapter 1 of the book on paligemma-shapes, 2 samples, into a chosen folder (issue 13: the CLI runs a
    chapter into a folder)."""
    done = cli(
        [
            "run",
            "01",
            "--only",
            "paligemma",
            "-p",
            "n_samples=2",
            "-p",
            "batch_size",
            "2",
            "--out",
            "out",
            "--no-progress",
            "--no-replicates",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    part = tmp_path / "out" / "paligemma"
    results = json.loads((part / "01_representations.json").read_text())
    assert results["model"] == "paligemma-shapes" and results["params"]["n_samples"] == 2
    entry = read_manifest(part)["chapters"]["01_representations"]
    assert entry["parameters"] == {"model": "paligemma-shapes", "n_samples": 2, "batch_size": 2}
    assert entry["fingerprint"]["model"]["files"]  # the organism's weights are part of the fingerprint
    notebook = (part / "01_representations.ipynb").read_text()
    for noise in ("IProgress", "without encryption"):  # kernel warnings, in the log or the notebook
        assert noise not in notebook and noise not in done.stderr, noise


def test_chapters_at_once_start_longest_first():
    """Known times (the last run's manifest): longest first, a replicate taking its pages' time when it has
    none of its own; no times: chapter by chapter across the seeds, so a seed's first chapter (the shared
    observation pass) starts before the chapters that load it."""

    def job(folder, stem):
        return book.ChapterJob(folder + stem, folder, Path(f"notebooks/{stem}.py"), {}, {})

    jobs = [job(folder, stem) for folder in ("", "seeds/m-seed1/") for stem in ("01_a", "02_b", "08_c")]
    natural = [j.key for j in book.longest_first(jobs, {})]
    assert natural == [
        "01_a",
        "seeds/m-seed1/01_a",
        "02_b",
        "seeds/m-seed1/02_b",
        "08_c",
        "seeds/m-seed1/08_c",
    ]
    times = {
        "01_a": {"seconds": 6.0},
        "02_b": {"seconds": 2.0},
        "08_c": {"seconds": 20.0},
        "seeds/m-seed1/08_c": {"seconds": 25.0},
    }
    timed = [j.key for j in book.longest_first(jobs, times)]
    assert timed == ["seeds/m-seed1/08_c", "08_c", "01_a", "seeds/m-seed1/01_a", "02_b", "seeds/m-seed1/02_b"]


def test_the_code_fingerprint_covers_every_file_of_every_subpackage(tmp_path, monkeypatch):
    """Every module of every subpackage (and the paper's values) is in the chapter's code fingerprint, the
    organisms' weights are not (the model fingerprint covers them); editing a file deep in a subpackage or
    moving a module changes the fingerprint, so no stale chapter is counted as up to date."""
    files = set(manifests.package_code_files())
    modules = {p for p in (ROOT / "vlmlib").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= files and ROOT / "vlmlib" / "paper" / "values" / "figure3_probing.json" in files
    assert not any("weights" in p.parts for p in files)
    copy = tmp_path / "vlmlib"
    shutil.copytree(ROOT / "vlmlib", copy, ignore=shutil.ignore_patterns("weights", "__pycache__"))
    monkeypatch.setattr(manifests, "PACKAGE_DIR", copy)
    source = ROOT / "notebooks" / "01_representations.py"
    before = manifests.code_fingerprint(source)
    assert manifests.code_fingerprint(source) == before
    spec = copy / "paper" / "chapters" / "representations.py"
    spec.write_text(spec.read_text() + "\n# an edit\n")
    edited = manifests.code_fingerprint(source)
    assert edited != before
    (copy / "paper" / "claims.py").rename(copy / "paper" / "rules.py")
    assert manifests.code_fingerprint(source) not in (before, edited)


def test_chapter_5_runs_its_exercises_at_the_smallest_fold_count(tmp_path):
    """Chapter 5 accepts folds=2 (enough for small folders): its exercises must use the chapter's folds, not
    a fixed 5 that needs five samples of every category (issue 22)."""
    source = ROOT / "notebooks" / "05_probing.py"
    parameters = {"model": "paligemma-shapes", "n_samples": 48, "folds": 2, "batch_size": 8}
    notebook = book.execute_chapter(source, tmp_path, parameters, exercises=True)
    cells = nbformat.read(notebook, as_version=4).cells
    solutions = [c for c in cells if c.cell_type == "code" and c.source.startswith("# Solution")]
    # exercise 1 defines the probe the student writes (no output); the others print what they find
    assert len(solutions) == 3 and all(c.execution_count for c in solutions)
    assert all(c.outputs for c in solutions[1:])
    # its rarest category has 4 samples: a 5-fold split would warn on the page (or fail, on a folder)
    streams = [o.get("name") for c in solutions for o in c.outputs if o.output_type == "stream"]
    assert "stderr" not in streams, [o for c in solutions for o in c.outputs]
    assert json.loads((tmp_path / "05_probing.json").read_text())["params"]["folds"] == 2
