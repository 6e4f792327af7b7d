import json

import numpy as np
import pytest
from PIL import Image

from vlmlib.data import PLURALS, SHAPES, DatasetError, load_samples, make_shapes_sample, shapes_samples


def test_shapes_is_seeded_and_prefix_stable():
    a, b = shapes_samples(5, seed=3), shapes_samples(8, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image)) and x.caption == y.caption
    assert not np.array_equal(np.asarray(make_shapes_sample(0, 3, "train").image),
                              np.asarray(make_shapes_sample(0, 3, "test").image))


def test_shapes_answers_captions_and_single_category():
    for s in shapes_samples(40, seed=1):
        n_in_caption = sum(int(w) for w in s.caption.split() if w.isdigit())
        assert 1 <= int(s.answer) <= 6 and n_in_caption == int(s.answer)
    single = shapes_samples(30, seed=1, single_category=True)
    assert {s.category for s in single} <= set(SHAPES) and len({s.category for s in single}) > 1
    singular = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
    for s in single:
        named = {singular[w] for w in s.caption.split() if w in singular}
        assert named == {s.category}, s.caption


def write_folder(tmp_path, rows, images=("a.png",)):
    for name in images:
        Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / name)
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(tmp_path)


def test_imagefolder_loads(tmp_path):
    folder = write_folder(tmp_path, [{"file_name": "a.png", "caption": "a red square", "answer": "1",
                                      "category": "square"}])
    [s] = load_samples(folder, 5)
    assert s.caption == "a red square" and s.answer == "1" and s.image.size == (16, 16)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no metadata.jsonl"),
    (lambda p: (p / "metadata.jsonl").write_text(""), "lists no images"),
    (lambda p: (p / "metadata.jsonl").write_text("{not json\n"), "not valid JSON"),
    (lambda p: (p / "metadata.jsonl").write_text('{"caption": "x"}\n'), "no 'file_name'"),
    (lambda p: (p / "metadata.jsonl").write_text('{"file_name": "gone.png"}\n'), "not in"),
    (lambda p: ((p / "bad.png").write_bytes(b"not an image"),
                (p / "metadata.jsonl").write_text('{"file_name": "bad.png"}\n')), "not a readable image"),
])
def test_broken_imagefolders_give_clear_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_samples(str(tmp_path), 3)


def test_unknown_dataset_and_bad_counts():
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_samples("no-such-dataset", 3)
    with pytest.raises(DatasetError, match="at least 1"):
        load_samples("shapes", 0)
