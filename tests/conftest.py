"""Shared fixtures: tiny random-weight models of each family, loaded once per session, and the built book."""

import os

# Before anything imports huggingface_hub: no network in tests, fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from vlmlib import load_model, shapes_samples  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

RANDOM_MODELS = ["paligemma-random", "qwen2vl-random"]
PROJECT = Path(__file__).resolve().parent.parent

# Set to a project folder whose book is already built (it has _build/html) to test that book instead of
# building one, e.g. after `make book`: VLMLIB_TEST_BOOK_ROOT=. pytest tests/test_browser.py
BOOK_ROOT_VARIABLE = "VLMLIB_TEST_BOOK_ROOT"

# Files the tests leave for a person to look at (screenshots); listed at the end of the run.
TEST_ARTIFACTS = PROJECT / "_build" / "test-artifacts"
_artifacts_written: list[Path] = []


@pytest.fixture(scope="session", params=RANDOM_MODELS)
def lm(request):
    """A tiny random-weight model of each family (eager attention, so weights can be read)."""
    return load_model(request.param, device="cpu", dtype="float32", attn_implementation="eager")


@pytest.fixture(scope="session")
def samples():
    return shapes_samples(6, seed=123)


def build_book_command(root: Path) -> list[str]:
    """The command `make book` runs, pointed at another project folder."""
    return [sys.executable, "-m", "vlmlib", "book", "--root", str(root), "--no-progress"]


def project_sources(directory: str, names: list[str]) -> set[str]:
    """copytree's ignore: what a fresh clone does not have (environment, caches, build products)."""
    ignored = {".venv", ".git", "_build", "runs", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
    ignored |= {name for name in names if name.endswith(".egg-info")}
    if Path(directory) == PROJECT / "book":  # executed chapters of earlier runs: book/<part>/
        from vlmlib.book.plan import DEFAULT_MODELS

        ignored |= set(DEFAULT_MODELS)
    return ignored & set(names)


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """A project folder holding the whole default book, executed and built to HTML, once per test run.

    Built from a copy of this checkout's sources (not its book/<part>/ build products), so the test
    sees exactly what `make book` on a fresh clone builds.
    """
    given = os.environ.get(BOOK_ROOT_VARIABLE)
    if given:
        root = Path(given).resolve()
        if not (root / "_build" / "html" / "index.html").is_file():
            raise pytest.UsageError(
                f"{BOOK_ROOT_VARIABLE}={given}: no built book there ({root}/_build/html/index.html "
                "is missing); run `make book` in that folder or unset the variable"
            )
        return root
    root = tmp_path_factory.mktemp("book") / "project"
    shutil.copytree(PROJECT, root, ignore=project_sources)
    # Chapter defaults are sized to run in seconds on the embedded models: build exactly what
    # `make book` builds.
    subprocess.run(build_book_command(root), check=True, cwd=root)
    return root


@pytest.fixture(scope="session")
def book_html(built_book) -> Path:
    """The built book's HTML folder (what a reader's browser loads)."""
    return built_book / "_build" / "html"


def save_artifact(name: str, data: bytes) -> Path:
    """Keep a file for a person to inspect after the run (written atomically); returns its path."""
    TEST_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = TEST_ARTIFACTS / name
    partial = path.with_name(f".{name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    _artifacts_written.append(path)
    print(f"test artifact: {path}")
    return path


def pytest_terminal_summary(terminalreporter):
    for path in _artifacts_written:
        terminalreporter.write_line(f"test artifact: {path}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module: tiny models run fastest so, and a shared CPU is not
    oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
