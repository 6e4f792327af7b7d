import json

import numpy as np
import pytest
from PIL import Image

from vlmlib import DatasetError, load_samples, shapes_samples
from vlmlib.data import PLURALS, SHAPES, make_shapes_sample


def test_shapes_is_seeded_and_prefix_stable():
    a, b = shapes_samples(5, seed=3), shapes_samples(8, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image)) and x.caption == y.caption
    assert not np.array_equal(
        np.asarray(make_shapes_sample(0, 3, "train").image),
        np.asarray(make_shapes_sample(0, 3, "test").image),
    )


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
    folder = write_folder(
        tmp_path, [{"file_name": "a.png", "caption": "a red square", "answer": "1", "category": "square"}]
    )
    [s] = load_samples(folder, 5)
    assert s.caption == "a red square" and s.answer == "1" and s.image.size == (16, 16)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no metadata.jsonl"),
        (lambda p: (p / "metadata.jsonl").write_text(""), "lists no images"),
        (lambda p: (p / "metadata.jsonl").write_text("{not json\n"), "not valid JSON"),
        (lambda p: (p / "metadata.jsonl").write_text('{"caption": "x"}\n'), "no 'file_name'"),
        (lambda p: (p / "metadata.jsonl").write_text('{"file_name": "gone.png"}\n'), "not in"),
        (
            lambda p: (
                (p / "bad.png").write_bytes(b"not an image"),
                (p / "metadata.jsonl").write_text('{"file_name": "bad.png"}\n'),
            ),
            "not a readable image",
        ),
    ],
)
def test_broken_imagefolders_give_clear_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_samples(str(tmp_path), 3)


def test_unknown_dataset_and_bad_counts():
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_samples("no-such-dataset", 3)
    with pytest.raises(DatasetError, match="at least 1"):
        load_samples("shapes", 0)


# ---------------------------------------------------------------- imagefolder on the datasets library


def image_folder(tmp_path, n, broken=(), answers=None):
    rows = []
    for i in range(n):
        name = f"img{i}.png"
        if i in broken:
            (tmp_path / name).write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / name)
        rows.append({"file_name": name, "caption": f"c{i}", "answer": answers[i] if answers else str(i)})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def test_numeric_answers_become_strings(tmp_path):
    folder = image_folder(tmp_path, 3, answers=[4, 2, 7])
    assert [s.answer for s in load_samples(str(folder), 3)] == ["4", "2", "7"]


def test_seeded_choice_decodes_only_what_it_uses(tmp_path, monkeypatch):
    import vlmlib.data as data

    folder = image_folder(tmp_path, 12)
    decoded = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda entry: decoded.append(entry["path"]) or real(entry))
    a = load_samples(str(folder), 4, seed=1)
    assert len(decoded) == 4  # not every image of the folder
    assert [s.id for s in a] == [s.id for s in load_samples(str(folder), 4, seed=1)]  # seeded
    assert {s.id for s in a} != {s.id for s in load_samples(str(folder), 4, seed=2)}  # the seed matters
    assert [s.id for s in a] == sorted((s.id for s in a), key=lambda n: int(n[3:-4]))  # folder order kept
    assert len(load_samples(str(folder), 50)) == 12  # asking for more than there is gives them all


def test_broken_images_are_skipped_counted_and_named(tmp_path):
    import vlmlib.data as data

    folder = image_folder(tmp_path, 6, broken={1, 4})
    with pytest.warns(UserWarning, match=r"4 of 6 listed images used; [12] skipped: img[14].png"):
        samples = load_samples(str(folder), 4, seed=0)  # 4 of 6 asked: the 4 readable ones
    assert {s.id for s in samples} == {"img0.png", "img2.png", "img3.png", "img5.png"}
    report = data.last_folder_report
    assert (
        report.used == 4
        and 1 <= len(report.skipped) <= 2
        and {n for n, _ in report.skipped} <= {"img1.png", "img4.png"}
    )
    with pytest.raises(
        DatasetError, match=r"img\d.png is not a readable image.*4 of 6 listed images used.*where 5"
    ):
        load_samples(str(folder), 5)  # fewer readable than asked for: the run fails, naming a file


def test_oversized_image_names_the_file(tmp_path, monkeypatch):
    folder = image_folder(tmp_path, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8x8 = 64 pixels > 2 x 10: PIL's bomb error
    with pytest.raises(DatasetError, match=r"img0.png is larger than PIL's limit"):
        load_samples(str(folder), 1)


def test_metadata_problems_name_file_and_line(tmp_path):
    folder = image_folder(tmp_path, 2)
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "img0.png", "caption": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"metadata.jsonl:1 is not UTF-8 .*byte 0xe9"):
        load_samples(str(folder), 1)
    (folder / "metadata.jsonl").write_text(
        '{"file_name": "img0.png", "answer": 4}\n{"file_name": "img1.png", "answer": "x"}\n'
    )
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2: 'answer' is a str here but a int on line 1"):
        load_samples(str(folder), 2)


def test_relative_folder_is_the_users_and_nothing_is_written_into_it(tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "mine" if (tmp_path / "mine").mkdir() is None else None, 3)
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.chdir(tmp_path)
    assert len(load_samples("mine", 2)) == 2
    assert sorted(p.name for p in folder.iterdir()) == before
    with pytest.raises(DatasetError, match=f"no folder {tmp_path / 'other'}"):
        load_samples("other", 2)


def test_seed_and_count_are_checked_with_their_names():
    with pytest.raises(DatasetError, match="'n_samples' should be an integer"):
        load_samples("shapes", "abc")
    with pytest.raises(DatasetError, match="'seed' should be at least 0"):
        load_samples("shapes", 2, seed=-1)


@pytest.mark.parametrize("linked", ["folder", "images"])
def test_a_dataset_read_through_a_symlink_names_its_images_as_listed(tmp_path, linked):
    """Sample ids are the metadata's file names, whether the folder or its images are symlinks (issue 22:
    ids like '../../data/colours/img04.jpg')."""
    data = tmp_path / "data" / "colours"
    data.mkdir(parents=True)
    rows = [{"file_name": f"sub/img{i}.png", "answer": str(i)} for i in range(3)]
    (data / "sub").mkdir()
    write_folder(data, rows, images=[f"sub/img{i}.png" for i in range(3)])
    if linked == "folder":
        (tmp_path / "work").mkdir()
        folder = tmp_path / "work" / "colours"
        folder.symlink_to(data, target_is_directory=True)
    else:
        folder = tmp_path / "linked"
        (folder / "sub").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text((data / "metadata.jsonl").read_text())
        for i in range(3):
            (folder / "sub" / f"img{i}.png").symlink_to(data / "sub" / f"img{i}.png")
    samples = load_samples(str(folder), 3)
    assert [s.id for s in samples] == [f"sub/img{i}.png" for i in range(3)]
