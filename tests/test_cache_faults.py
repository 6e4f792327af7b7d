"""A damaged observation-cache entry never stops a run: it is named, removed, recomputed and saved again;
a refresh (the runner's --force) reads no entry written before; a read-only cache is still read."""

import contextlib
import errno
import os
import subprocess
import warnings
import zipfile

import numpy as np
import pytest

import vlmlib.obscache as obscache
from vlmlib import Moments, Observation, load_model, observe, shapes_samples
from vlmlib.obscache import REFRESH_ENV, load_observation, observe_cached, save_observation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

READINGS = ("cosine",)


@pytest.fixture(scope="module")
def lm():
    return load_model("paligemma-random", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def samples():
    return shapes_samples(3, seed=5)


@pytest.fixture
def passes(monkeypatch):
    """The passes computed (not loaded) from now on."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["readings"])
        return observe(*args, **kwargs)

    monkeypatch.setattr(obscache, "observe", counted)
    return calls


def cached(lm, samples, folder, **kwargs):
    return observe_cached(lm, samples, READINGS, batch_size=3, cache_dir=folder, progress=False, **kwargs)


def entry(folder):
    (path,) = folder.glob("observation-*.npz")
    return path


def same(a: Observation, b: Observation):
    assert sorted(a.stats) == sorted(b.stats) and a.n_samples == b.n_samples
    for name in a.stats:
        np.testing.assert_array_equal(a.stats[name].sum, b.stats[name].sum, err_msg=name)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def garbage(path):
    path.write_bytes(b"\x00not an npz at all" * 50)


def corrupt_member(path):
    """A byte flipped inside a stored array: the zip's CRC no longer matches."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(next(n for n in z.namelist() if n != "meta.npy"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))


def another_entry(path):
    """A sound entry, but of another key (e.g. copied over by hand)."""
    obs, header = load_observation(path)
    save_observation(obs, path, header={**header, "key": "0123456789abcdef0123"})


def shapes_disagree(path):
    obs, header = load_observation(path)
    name = next(iter(obs.stats))
    m = obs.stats[name]
    obs.stats[name] = Moments(m.sum, m.sumsq[:-1], m.count)
    save_observation(obs, path, header=header)


def wrong_sample_count(path):
    obs, header = load_observation(path)
    obs.n_samples += 5
    save_observation(obs, path, header=header)


@pytest.mark.parametrize(
    "damage, error",
    [
        (truncate, r"BadZipFile|EOFError|ValueError|error"),
        (empty, r"EOFError|ValueError"),
        (garbage, r"BadZipFile|ValueError|OSError"),
        (corrupt_member, r"BadZipFile|error|ValueError"),  # "Bad CRC-32", or a broken deflate stream
        (another_entry, r"ValueError: it holds the entry '0123456789abcdef0123'"),
        (shapes_disagree, r"ValueError: statistic .* has sums"),
        (wrong_sample_count, r"ValueError: it holds 8 samples, not 3"),
    ],
)
def test_a_damaged_entry_is_named_removed_recomputed_and_saved(lm, samples, tmp_path, passes, damage, error):
    first = cached(lm, samples, tmp_path)
    path = entry(tmp_path)
    damage(path)
    passes.clear()
    with pytest.warns(UserWarning, match="damaged or unreadable") as caught:
        again = cached(lm, samples, tmp_path)
    (message,) = [str(w.message) for w in caught if "observation cache" in str(w.message)]
    assert str(path) in message and "removed" in message, message  # the file, by its full path
    assert __import__("re").search(error, message), message  # and what is wrong with it
    assert len(passes) == 1  # recomputed
    same(first, again)
    same(load_observation(entry(tmp_path))[0], first)  # a good entry in its place
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the next reader loads it, quietly
        passes.clear()
        same(cached(lm, samples, tmp_path), first)
    assert passes == []


def test_a_refresh_reads_no_entry_written_before_and_replaces_it(lm, samples, tmp_path, passes, monkeypatch):
    first = cached(lm, samples, tmp_path)
    path = entry(tmp_path)
    stamp = path.stat().st_mtime_ns
    passes.clear()
    loads = []
    real_load = obscache.load_observation
    monkeypatch.setattr(obscache, "load_observation", lambda p: loads.append(p) or real_load(p))
    monkeypatch.setenv(REFRESH_ENV, "1")  # as a user would set it: every read is a refresh
    same(cached(lm, samples, tmp_path), first)
    same(cached(lm, samples, tmp_path), first)
    assert len(passes) == 2 and path.stat().st_mtime_ns != stamp  # computed and rewritten each time
    assert loads == []  # the entries written before were not read (their header alone was looked at)
    passes.clear()
    cached(lm, samples, tmp_path, refresh=True)
    assert len(passes) == 1
    # the runner's --force names its refresh (its run id): its chapters share the pass they computed
    passes.clear()
    monkeypatch.setenv(REFRESH_ENV, "run-1")
    cached(lm, samples, tmp_path)
    cached(lm, samples, tmp_path)
    assert len(passes) == 1 and loads == [path]
    monkeypatch.setenv(REFRESH_ENV, "run-2")
    cached(lm, samples, tmp_path)
    assert len(passes) == 2  # another forced run computes it again
    monkeypatch.setenv(REFRESH_ENV, "0")
    cached(lm, samples, tmp_path)
    monkeypatch.delenv(REFRESH_ENV)
    cached(lm, samples, tmp_path)
    assert len(passes) == 2  # no refresh: what the refresh wrote is read


@contextlib.contextmanager
def read_only(folder, monkeypatch):
    """Make `folder` read-only for this process: file modes for a user, a read-only bind mount for root
    (where it may mount), else the writes obscache makes fail as on a read-only file system."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield "modes"
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", folder, folder], capture_output=True)
    if mounted.returncode == 0:
        try:
            yield "mount"
        finally:
            subprocess.run(["umount", folder], check=True)
        return

    real_open = open

    def refusing_open(path, mode="r", *args, **kwargs):
        if str(path).startswith(str(folder)) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *args, **kwargs)

    def refusing_write(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(obscache, "open", refusing_open, raising=False)
    monkeypatch.setattr(obscache, "atomic_write", refusing_write)
    yield "simulated"


def test_a_read_only_cache_is_read_and_a_missing_entry_computed_without_saving(
    lm, samples, tmp_path, passes, monkeypatch
):
    folder = tmp_path / "cache"
    first = cached(lm, samples, folder)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(obscache, "_unwritable_warned", set())
    passes.clear()
    with read_only(folder, monkeypatch):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            same(cached(lm, samples, folder), first)  # a present entry: read, no lock file needed
        assert passes == []
        with pytest.warns(UserWarning, match=f"observation cache {folder} cannot be written"):
            other = cached(lm, samples[:2], folder)  # missing: computed, not saved
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # warned once per folder
            cached(lm, samples[1:], folder)
        assert len(passes) == 2 and other.n_samples == 2
        assert sorted(p.name for p in folder.iterdir()) == before


def test_a_forced_run_refreshes_the_cache_of_its_chapters_only(tmp_path, monkeypatch):
    """`--force` reaches the chapters' kernels as VLMLIB_CACHE_REFRESH=<run id> (kernels inherit the
    runner's environment); a run that is not forced leaves it as it was."""
    import json

    import nbformat

    from vlmlib.book import runner as book
    from vlmlib.book.plan import make_plan

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_alpha.py").write_text(
        '# %% [markdown]\n# # 1. Alpha\n\n# %% tags=["parameters"]\nmodel = "paligemma-shapes"\n'
        'dataset = "shapes"\nn_samples = 2\nseed = 0\n'
    )
    monkeypatch.setattr(book, "replicates", lambda model: [])
    monkeypatch.delenv(REFRESH_ENV, raising=False)
    seen = []

    def execute(source, out_dir, parameters, kernel=None, progress=False, cache_dir=None, exercises=True):
        seen.append(os.environ.get(REFRESH_ENV))
        nbformat.write(nbformat.v4.new_notebook(cells=[]), out_dir / f"{source.stem}.ipynb")
        (out_dir / f"{source.stem}.json").write_text(json.dumps(parameters))
        return out_dir / f"{source.stem}.ipynb"

    monkeypatch.setattr(book, "execute_chapter", execute)
    book.run_plan(make_plan(root=tmp_path, only=["paligemma"]), progress=False)
    book.run_plan(make_plan(root=tmp_path, only=["paligemma"], force=True), progress=False)
    assert seen[0] is None and seen[1]  # the forced run's chapters refresh the cache
    run_id = json.loads((tmp_path / "book" / "paligemma" / "run-manifest.json").read_text())["latest_run"]
    assert seen[1] == run_id
    assert REFRESH_ENV not in os.environ  # and the runner's own environment is as it was
