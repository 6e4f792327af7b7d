"""The `scenes` set of the deep organisms: seeded, counts 1-9 off the grid, counterfactual partners that
differ by one object, hint variants, and the text language the language model is pre-trained on."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vlmlib import DatasetError, load_samples
from vlmlib.data.scenes import (
    NUMBER_WORDS,
    SCENE_MAX_OBJECTS,
    SCENE_SIZE,
    cell_targets,
    hint_variants,
    make_scene_sample,
    render_scene,
    scene_document,
    scene_partner,
    scenes_samples,
    scenes_vocabulary,
    with_hint,
)


def pixels(sample):
    return np.asarray(sample.image)


def test_scenes_are_seeded_prefix_stable_and_split():
    a, b = scenes_samples(6, seed=3), scenes_samples(9, seed=3)
    for x, y in zip(a, b):
        assert np.array_equal(pixels(x), pixels(y)) and x.caption == y.caption and x.id == y.id
    train = {pixels(s).tobytes() for s in scenes_samples(40, seed=0, split="train")}
    test = {pixels(s).tobytes() for s in scenes_samples(40, seed=0, split="test")}
    assert not train & test
    assert not np.array_equal(pixels(make_scene_sample(0, 0)), pixels(make_scene_sample(0, 1)))
    with pytest.raises(DatasetError):
        make_scene_sample(0, 0, "validation")


def test_counts_one_to_nine_off_the_grid_with_occlusion():
    samples = scenes_samples(300, seed=5)
    counts = Counter(int(s.answer) for s in samples)
    assert set(counts) == set(range(1, SCENE_MAX_OBJECTS + 1))
    assert all(s.image.size == (SCENE_SIZE, SCENE_SIZE) for s in samples)
    sizes = [o.size for s in samples for o in s.scene.objects]
    assert max(sizes) > 2 * min(sizes)  # arbitrary sizes
    centres = {(o.cx % 16, o.cy % 16) for s in samples for o in s.scene.objects}
    assert len(centres) > 1000  # arbitrary positions, not one per cell
    overlapping = 0
    for s in samples:
        _, index_map = render_scene(s.scene)
        visible = set(np.unique(index_map)) - {0}
        assert visible == set(range(1, s.scene.count + 1)), s.id  # every object stays visible
        objs = s.scene.objects
        overlapping += any(
            np.hypot(p.cx - q.cx, p.cy - q.cy) < (p.size + q.size) / 2
            for i, p in enumerate(objs)
            for q in objs[i + 1 :]
        )
    assert overlapping > 20  # partial occlusion happens
    for s in samples[:50]:  # the caption counts the objects, in words
        words = s.caption.split()
        n = sum(NUMBER_WORDS.index(w) + 1 for w in words if w in NUMBER_WORDS)
        n += sum(w in ("a", "an") for w in words)
        assert n == int(s.answer), s.caption
        assert len(s.objects) == int(s.answer) and all(0 <= c < 64 for c, _, _ in s.objects)


@pytest.mark.parametrize("change", ["add", "remove", "auto"])
def test_counterfactual_partner_differs_by_one_object(change):
    for s in scenes_samples(30, seed=2):
        if (change == "remove" and s.scene.count == 1) or (change == "add" and s.scene.count == 9):
            with pytest.raises(DatasetError):
                scene_partner(s, change)
            continue
        p = scene_partner(s, change)
        assert abs(int(p.answer) - int(s.answer)) == 1
        if change != "auto":
            assert int(p.answer) - int(s.answer) == (1 if change == "add" else -1)
        assert (
            set(p.scene.objects) ^ set(s.scene.objects)
            and len(set(p.scene.objects) ^ set(s.scene.objects)) == 1
        )
        assert (p.scene.background, p.scene.clutter, p.scene.noise_seed) == (
            s.scene.background,
            s.scene.clutter,
            s.scene.noise_seed,
        )
        # the images differ only where the changed object is (or was)
        changed = (set(p.scene.objects) ^ set(s.scene.objects)).pop()
        diff = np.argwhere((pixels(p) != pixels(s)).any(axis=-1))
        assert len(diff)
        assert np.all(np.abs(diff[:, 1] - changed.cx) <= changed.size / 2 + 2)
        assert np.all(np.abs(diff[:, 0] - changed.cy) <= changed.size / 2 + 2)
        again = scene_partner(s, change)
        assert np.array_equal(pixels(again), pixels(p))


def test_hint_variants_and_training_hint_rate():
    s = scenes_samples(1, seed=4)[0]
    v = hint_variants(s)
    assert set(v) == {"absent", "agree", "conflict"}
    assert v["absent"].hint is None and v["absent"].question == s.question
    assert v["agree"].hint_count == int(s.answer) and v["agree"].hint_kind == "agree"
    assert v["conflict"].hint_count != int(s.answer) and v["conflict"].hint_kind == "conflict"
    for variant in v.values():
        assert np.array_equal(pixels(variant), pixels(s)) and variant.answer == s.answer
        if variant.hint:
            assert variant.question.startswith(variant.hint) and str(variant.hint_count) in variant.hint
    assert with_hint(s, 1).hint == "There is 1 object ."
    assert hint_variants(s)["conflict"].hint_count == v["conflict"].hint_count  # the same every time
    train = scenes_samples(600, seed=0, split="train", hint_rate=0.5, hint_truth=0.85)
    hinted = [t for t in train if t.hint]
    assert 0.4 < len(hinted) / len(train) < 0.6
    assert 0.78 < np.mean([t.hint_kind == "agree" for t in hinted]) < 0.92
    plain = scenes_samples(20, seed=0, split="train")  # the image does not depend on the hint
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, train))


def test_vocabulary_covers_every_word_and_documents_read_the_count():
    vocab = set(scenes_vocabulary())
    for i in range(200):
        context, question, answer = scene_document(i, 0, "train")
        assert set(f"{context} {question} {answer}".split()) <= vocab
        if question and "There" not in context:  # a description: the count is in the words
            words = context.split()
            n = sum(NUMBER_WORDS.index(w) + 1 for w in words if w in NUMBER_WORDS)
            assert n + sum(w in ("a", "an") for w in words) == int(answer)
    for s in scenes_samples(50, seed=0):
        assert set(s.caption.split()) <= vocab


def test_cell_targets_and_load_samples():
    s = scenes_samples(3, seed=0)[2]
    t = cell_targets(s.scene)
    assert t["object"].shape == (64,) and t["centres"].sum() == s.scene.count
    assert set(np.unique(t["object"])) - {0} <= set(range(1, s.scene.count + 1))
    loaded = load_samples("scenes", 3, seed=0)
    assert [x.id for x in loaded] == [x.id for x in scenes_samples(3, seed=0)]
    single = load_samples("scenes", 10, seed=0, single_category=True)
    assert all(len({o.shape for o in x.scene.objects}) == 1 == len({x.category}) for x in single)
