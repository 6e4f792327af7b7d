"""PixelProse against a local HTTP server on 127.0.0.1: good, broken, slow, missing, tiny, flaky and
replaced images, listed in a parquet shard with the dataset card's columns, written here."""

import hashlib
import http.server
import io
import threading
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmlib import DatasetError, load_samples, shapes_samples
from vlmlib.data.pixelprose import category_of, pixelprose_samples, samples_provenance

FAST = dict(timeout=0.5, retries=1, backoff=0.0)


def png(side, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = {f"/good{i}.png": png(80, i) for i in range(5)}
CAPTIONS = [
    "A dog runs on the beach.",
    "Two cats sleep on a sofa.",
    "A red car parked by a tree.",
    "A tall building at night.",
    "A person walks past buildings.",
]


class Server:
    """Serves the test images; counts requests per path."""

    def __init__(self):
        self.hits = Counter()
        self.flaky_left = 1
        files = {
            **GOOD,
            "/broken.png": b"this is not an image at all",
            "/small.png": png(16, 9),
            "/changed.png": png(80, 10),
            "/flaky.png": png(80, 11),
            "/slow.png": png(80, 12),
        }
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                if self.path == "/slow.png":
                    time.sleep(2.0)
                if self.path == "/flaky.png" and server.flaky_left:
                    server.flaky_left -= 1
                    self.send_error(503)
                    return
                if self.path not in files:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(files[self.path])))
                self.end_headers()
                try:
                    self.wfile.write(files[self.path])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def write_shard(path, server):
    """A shard with PixelProse's columns (uid, url, key, status, original_caption, vlm_model,
    vlm_caption) plus a sha256 column, filled for some rows only."""
    rows = [
        (p, CAPTIONS[i], hashlib.sha256(GOOD[p]).hexdigest() if i % 2 else None) for i, p in enumerate(GOOD)
    ]
    rows += [
        ("/broken.png", "A dog.", None),
        ("/small.png", "A cat.", None),
        ("/missing.png", "A car.", None),
        ("/slow.png", "A tree.", None),
        ("/changed.png", "A building.", "0" * 64),
        ("/flaky.png", "A dog and a cat.", None),
    ]
    table = pa.table(
        {
            "uid": [f"uid-{i:03d}" for i in range(len(rows))],
            "url": [server.url + p for p, _, _ in rows],
            "key": [f"{i:09d}" for i in range(len(rows))],
            "status": ["success"] * len(rows),
            "original_caption": [f"alt text {i}" for i in range(len(rows))],
            "vlm_model": ["gemini-pro-vision"] * len(rows),
            "vlm_caption": [c for _, c, _ in rows],
            "sha256": [h for _, _, h in rows],
        }
    )
    pq.write_table(table, path)
    return path


def test_every_problem_is_skipped_and_counted(server, tmp_path):
    shard = write_shard(tmp_path / "vlm_captions_test_00.parquet", server)
    with pytest.raises(
        DatasetError, match=r"only 6 valid images of the 7 asked for after reading 11 rows"
    ) as err:
        pixelprose_samples(7, shards=str(shard), cache_dir=tmp_path / "cache", **FAST)
    report = err.value.report
    assert report.valid == 6  # the five good ones and the flaky one, fetched on its retry
    assert dict(report.skipped) == {
        "not an image": 1,
        "too small": 1,
        "HTTP 404": 1,
        "timeout": 1,
        "sha256 mismatch": 1,
    }
    assert server.hits["/slow.png"] == 2 and server.hits["/flaky.png"] == 2  # retried once each
    assert server.hits["/missing.png"] == 1  # a 404 is not retried
    assert any("/broken.png" in e for e in report.examples["not an image"])


def test_samples_with_provenance_and_a_cache(server, tmp_path):
    shard = str(write_shard(tmp_path / "shard.parquet", server))
    first = pixelprose_samples(4, seed=3, shards=shard, cache_dir=tmp_path / "cache", **FAST)
    assert len(first) == 4 and first.report.valid == 4
    served = {hashlib.sha256(v).hexdigest(): k for k, v in {**GOOD, "/flaky.png": png(80, 11)}.items()}
    for sample, record in zip(first, samples_provenance(first)):
        assert sample.answer is None and sample.caption and sample.image.size == (80, 80)
        assert record["id"].startswith("uid-") and record["url"] == sample.url
        assert served[record["sha256"]] == sample.url.removeprefix(server.url)  # the bytes that were served
    # The same shards and seed give the same images, now from the cache without the network.
    hits = Counter(server.hits)
    again = pixelprose_samples(4, seed=3, shards=shard, cache_dir=tmp_path / "cache", **FAST)
    assert samples_provenance(again) == samples_provenance(first)
    assert again.report.from_cache == 4
    used = [s.url.removeprefix(server.url) for s in again]
    assert all(server.hits[path] == hits[path] for path in used)  # not requested again
    # failures are not cached: a rerun tries them again (the network may have been down)
    assert sum(server.hits.values()) > sum(hits.values())


def test_a_damaged_cache_file_is_fetched_again(server, tmp_path):
    shard = str(write_shard(tmp_path / "shard.parquet", server))
    first = pixelprose_samples(1, shards=shard, cache_dir=tmp_path / "cache", **FAST)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1
    cached[0].write_bytes(b"truncated")
    again = pixelprose_samples(1, shards=shard, cache_dir=tmp_path / "cache", **FAST)
    assert again.report.recached == 1 and not again.report.skipped
    assert samples_provenance(again) == samples_provenance(first)
    assert hashlib.sha256(cached[0].read_bytes()).hexdigest() == again[0].sha256  # the cache is whole again


def test_probing_subset_by_caption_keyword(server, tmp_path):
    assert category_of("A dog runs on the beach.") == "dog"
    assert category_of("Two cats sleep.") == "cat"  # plurals count
    assert category_of("A person walks past buildings.") is None  # two categories
    assert category_of("A catalogue of carpets.") is None  # whole words only
    assert category_of(None) is None
    shard = str(write_shard(tmp_path / "shard.parquet", server))
    # Rows naming one category: 5 (dog, cat, building among the good images; dog, cat among the bad ones)
    samples = pixelprose_samples(3, shards=shard, cache_dir=tmp_path / "cache", single_category=True, **FAST)
    assert sorted(s.category for s in samples) == ["building", "cat", "dog"]
    with pytest.raises(DatasetError, match="only rows naming exactly one category count") as err:
        pixelprose_samples(4, shards=shard, cache_dir=tmp_path / "cache", single_category=True, **FAST)
    # car+tree, person+buildings, dog+cat
    assert err.value.report.skipped["caption names not exactly one category"] == 3


def test_load_samples_dispatches_with_the_shards_from_the_environment(server, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / "vlm_captions_x_00.parquet", server)
    monkeypatch.setenv("PIXELPROSE_SHARDS", str(tmp_path / "data"))
    monkeypatch.setenv("PIXELPROSE_CACHE", str(tmp_path / "cache"))
    samples = load_samples("pixelprose", 2, seed=0)
    assert len(samples) == 2 and all(s.url.startswith(server.url) for s in samples)


def test_unreadable_shards_are_named(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        pixelprose_samples(1, shards=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no .parquet file"):
        pixelprose_samples(1, shards=str(tmp_path / "empty"))
    pq.write_table(pa.table({"caption": ["x"]}), tmp_path / "other.parquet")
    with pytest.raises(DatasetError, match="no 'url' column"):
        pixelprose_samples(1, shards=str(tmp_path / "other.parquet"), cache_dir=tmp_path / "c")


def test_provenance_of_generated_samples():
    records = samples_provenance(shapes_samples(2, seed=1))
    assert [r["url"] for r in records] == [None, None] and records[0]["pixels_sha256"] != records[1][
        "pixels_sha256"
    ]
    assert samples_provenance(shapes_samples(2, seed=1)) == records  # the same images, the same record
