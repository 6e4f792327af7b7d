"""The deep organisms of issue 24 (`scenes`, the paper's depths): the bars they must clear on data they
never saw, and the checks that they answer from the image, not from something beside it.

- fresh seeds: a test-split seed used neither in training, nor for evaluations during training (seed
  1), nor for the model card (seed 0): the issue's bar is counting at least 85%, and not saturated (the
  clean answer loss leaves interventions room to move it). `paligemma-scenes` seed 0 counts 69% of
  fresh scenes (model card): the bar is a strict expected failure until a longer tune clears it;
- whatever the accuracy, the organism must answer from the objects in the image, far from chance (mean
  absolute error about 3 for a uniform guess over 1-9, a ninth right):
  - a blank image (the same scene with its objects removed: background, noise and clutter kept): the
    answers no longer match the counts;
  - one object removed: the answers go down with the image;
  - an independent renderer: scenes drawn here with numpy masks only (no clutter, no noise, none of
    the data layer's drawing code) are still counted roughly right.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from vlmlib import load_model
from vlmlib.data import COLOURS
from vlmlib.data.samples import Sample
from vlmlib.data.scenes import (
    SCENE_MAX_OBJECTS,
    SCENE_SIZE,
    SIZE_RANGE,
    sample_of,
    scene_partner,
    scenes_samples,
)
from vlmlib.organisms import DEEP_ORGANISMS
from vlmlib.organisms import WEIGHTS_DIR as ORGANISM_DIR
from vlmlib.organisms.recipes import answer_scores

FRESH_SEED = 7
BAR = 0.85  # the issue's: high, but ...
SATURATED_LOSS = 0.01  # ... not saturated: the median clean answer loss stays above this many nats
DEPTHS = {"paligemma": 18, "qwen2vl": 28}


@pytest.fixture(scope="module", params=DEEP_ORGANISMS)
def organism(request):
    lm = load_model(request.param, device="cpu", dtype="float32")
    torch.set_grad_enabled(False)
    yield lm
    torch.set_grad_enabled(True)


def _answers(lm, samples):
    return answer_scores(lm.model, lm.processor, lm.family, samples)


def test_the_deep_organisms_are_shipped_with_their_model_card_numbers():
    assert DEEP_ORGANISMS, "no deep organism is shipped"
    for name in DEEP_ORGANISMS:
        folder = ORGANISM_DIR / name
        log = json.loads((folder / "training_log.json").read_text())
        report = log["report"]
        assert {"accuracy", "per_count", "answer_loss", "conflict_follows_hint", "text_prior"} <= set(report)
        # a tune run again (`continue_from`) keeps the first run's log
        stages, earlier = set(log["stages"]), log
        while "continued_from_log" in earlier:
            earlier = earlier["continued_from_log"]
            stages |= set(earlier["stages"])
        assert {"text", "vision", "align", "tune"} <= stages
        assert "text_prior_before_tune" in log and "text_prior_after_tune" in log


def test_a_deep_organism_has_the_papers_depth_and_many_image_tokens(organism):
    assert organism.trained
    assert organism.num_layers == DEPTHS[organism.family.name]
    assert organism.num_vision_layers >= 12
    batch = organism.encode_samples(scenes_samples(1, FRESH_SEED))
    assert int(organism.vision_mask(batch).sum()) >= 64


def _error(samples, predicted) -> float:
    """Mean absolute error of the answers (a non-number counts as 9 off)."""
    return float(
        np.mean([abs(int(p) - int(s.answer)) if p.isdigit() else 9 for s, p in zip(samples, predicted)])
    )


@pytest.mark.xfail(
    strict=True, reason="seed 0 counts 69% (PaliGemma) and 65% (Qwen2-VL) of scenes, under 85% (model card)"
)
def test_a_deep_organism_clears_the_counting_bar_on_fresh_scenes(organism):
    samples = scenes_samples(180, FRESH_SEED, "test")
    predicted, _ = _answers(organism, samples)
    assert np.mean([p == s.answer for s, p in zip(samples, predicted)]) >= BAR


def test_a_deep_organism_counts_fresh_scenes_far_above_chance_without_saturating(organism):
    samples = scenes_samples(180, FRESH_SEED, "test")
    predicted, losses = _answers(organism, samples)
    accuracy = np.mean([p == s.answer for s, p in zip(samples, predicted)])
    assert accuracy >= 0.5 and _error(samples, predicted) <= 0.6, (accuracy, _error(samples, predicted))
    assert np.median(losses) > SATURATED_LOSS, np.median(losses)


def test_without_its_objects_a_scene_is_no_longer_counted(organism):
    samples = scenes_samples(90, FRESH_SEED, "test")
    # the same background, noise and clutter, no object: the true counts are no longer in the image
    blank = [sample_of(replace(s.scene, objects=())) for s in samples]
    blank = [replace(b, answer=s.answer) for b, s in zip(blank, samples)]
    predicted, _ = _answers(organism, blank)
    matches = np.mean([p == s.answer for s, p in zip(samples, predicted)])
    assert matches <= 0.35, matches  # chance is about 1/9; a model reading anything but the objects fails


def test_removing_one_object_lowers_the_answer_by_one(organism):
    samples = [s for s in scenes_samples(120, FRESH_SEED, "test") if int(s.answer) > 1][:90]
    fewer = [scene_partner(s, "remove") for s in samples]
    assert all(int(f.answer) == int(s.answer) - 1 for f, s in zip(fewer, samples))
    before, _ = _answers(organism, samples)
    after, _ = _answers(organism, fewer)
    drop = np.mean([int(b) - int(a) for b, a in zip(before, after) if b.isdigit() and a.isdigit()])
    accuracy = np.mean([p == f.answer for f, p in zip(fewer, after)])
    assert 0.6 <= drop <= 1.4 and accuracy >= 0.5, (drop, accuracy)


def _independent_scene(rng: np.random.Generator, count: int) -> Sample:
    """A scene drawn with numpy masks: discs and squares of the palette's colours on a plain background,
    apart from each other, none of the data layer's code."""
    size = SCENE_SIZE
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    background = np.array(rng.choice([(0, 0, 0), (235, 235, 235), (90, 90, 90)]), dtype=np.uint8)
    image = np.broadcast_to(background, (size, size, 3)).copy()
    placed: list[tuple[float, float, float]] = []
    colours = list(COLOURS.values())
    while len(placed) < count:
        d = rng.uniform(*SIZE_RANGE) * 0.8
        cx, cy = rng.uniform(d / 2 + 1, size - d / 2 - 1, size=2)
        if any(np.hypot(cx - x, cy - y) < (d + e) / 2 + 3 for x, y, e in placed):
            continue
        placed.append((cx, cy, d))
        if rng.random() < 0.5:
            mask = np.hypot(xx - cx, yy - cy) <= d / 2
        else:
            mask = (np.abs(xx - cx) <= d / 2.4) & (np.abs(yy - cy) <= d / 2.4)
        image[mask] = colours[int(rng.integers(len(colours)))]
    return Sample(image=Image.fromarray(image), answer=str(count), id=f"independent-{count}")


def test_a_deep_organism_counts_scenes_from_an_independent_renderer(organism):
    rng = np.random.default_rng(FRESH_SEED)
    samples = [_independent_scene(rng, n) for n in range(1, SCENE_MAX_OBJECTS + 1) for _ in range(10)]
    predicted, _ = _answers(organism, samples)
    # drawn differently, still counted: within about one object on average (a uniform guess: 3)
    assert _error(samples, predicted) <= 1.2, _error(samples, predicted)
