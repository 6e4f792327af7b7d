"""The shipped model organisms, and the script that trains them.

The organisms must load offline through the project's loader and really answer the counting question
on held-out images (test split, a seed used neither in training nor for the model card); the
training script must lower the loss and be deterministic for a seed.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlmlib import load_model, shapes_samples
from vlmlib.book.seeds import replicates
from vlmlib.data import MAX_OBJECTS
from vlmlib.families import family_named
from vlmlib.models import embedded_names
from vlmlib.organisms import WEIGHTS_DIR as ORGANISM_DIR
from vlmlib.organisms.train import TrainConfig, build, encode, evaluate_counting, train

SHIPPED = ("paligemma-shapes", "qwen2vl-shapes")
# and their training-seed replicates
ORGANISMS = SHIPPED + tuple(r for name in SHIPPED for r in replicates(name))
TEST_SEED = 7  # test split; training uses the train split, the model card seeds 0 and 1
BAR, BAR_PER_COUNT = 0.90, 0.80


@pytest.fixture(scope="module")
def held_out():
    return shapes_samples(120, seed=TEST_SEED, split="test")


@pytest.mark.parametrize("name", ORGANISMS)
def test_organism_is_shipped_small_and_logged(name):
    folder = ORGANISM_DIR / name
    assert name in embedded_names()
    weights = folder / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size < 10_000_000  # 16-bit, a few MB
    config = json.loads((folder / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) in ("bfloat16", "float16")
    log = json.loads((folder / "training_log.json").read_text())
    assert {"config", "curve", "report"} <= set(log)


@pytest.mark.parametrize("name", ORGANISMS)
def test_organism_loads_offline_and_counts(name, held_out, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model(name, device="cpu")
    assert lm.trained and lm.num_layers >= 8 and lm.num_vision_layers >= 4
    result = evaluate_counting(lm.model, lm.processor, lm.family, held_out)
    per_count = {n: round(a, 3) for n, a in result["per_count"].items()}
    assert set(per_count) == {str(n) for n in range(1, MAX_OBJECTS + 1)}
    assert result["accuracy"] >= BAR, per_count
    assert min(per_count.values()) >= BAR_PER_COUNT, per_count


def test_processors_reload_with_transformers_classes():
    from transformers import AutoImageProcessor, AutoTokenizer, PaliGemmaProcessor

    pali = PaliGemmaProcessor.from_pretrained(ORGANISM_DIR / "paligemma-shapes", local_files_only=True)
    assert pali.tokenizer.convert_tokens_to_ids("3") != pali.tokenizer.unk_token_id
    qwen = ORGANISM_DIR / "qwen2vl-shapes"
    tok = AutoTokenizer.from_pretrained(qwen, local_files_only=True)
    assert tok.convert_tokens_to_ids("<|image_pad|>") != tok.unk_token_id
    assert type(AutoImageProcessor.from_pretrained(qwen, local_files_only=True)).__name__.startswith(
        "Qwen2VLImageProcessor"
    )


def _tiny_run(family, **overrides):
    config = TrainConfig(
        family=family,
        batch_size=4,
        vision_steps=2,
        text_steps=2,
        align_steps=2,
        tune_steps=2,
        warmup=1,
        eval_every=0,
        caption_curriculum=2,
        **overrides,
    )
    model, _, _ = train(config, verbose=False)
    return model


@pytest.mark.parametrize("family", ["paligemma", "qwen2vl"])
def test_training_is_deterministic_for_a_seed(family):
    a, b = _tiny_run(family).state_dict(), _tiny_run(family).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["paligemma", "qwen2vl"])
def test_a_few_training_steps_lower_the_loss(family):
    config = TrainConfig(
        family=family,
        batch_size=8,
        vision_steps=0,
        text_steps=0,
        align_steps=0,
        tune_steps=12,
        warmup=1,
        lr=2e-3,
        cell_weight=0.0,
        eval_every=0,
    )
    samples = shapes_samples(8, seed=3, split="train")
    fam = family_named(family)

    def loss_of(model, processor):
        batch = encode(fam, processor, samples, [False] * 8)
        with torch.no_grad():
            return model.eval()(**batch, use_cache=False).loss.item()

    before = loss_of(*build(config))
    model, processor, log = train(config, verbose=False)
    assert loss_of(model, processor) < before - 0.5


# ---------------------------------------------------------------- the deep organisms' recipe (issue 24)


@pytest.mark.parametrize("family, depth", [("paligemma", 18), ("qwen2vl", 28)])
def test_deep_builders_have_the_papers_depths_and_64_image_tokens(family, depth):
    from vlmlib.data.scenes import scenes_samples
    from vlmlib.organisms.recipes import RecipeConfig, build

    model, processor = build(RecipeConfig(family=family))
    lm = model.model.language_model
    assert len(lm.layers) == depth
    fam = family_named(family)
    assert len(model.get_submodule(fam.vision_layers)) >= 12
    samples = scenes_samples(2, seed=0)
    batch = fam.encode(processor, [s.image for s in samples], [s.question for s in samples])
    image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == [64, 64]
    assert image_tokens[0] > 3 * (batch["attention_mask"][0].sum() - image_tokens[0])  # images dominate
    n = sum(p.numel() for p in model.parameters())
    assert 2 * n < 20_000_000  # the 16-bit organism stays under 20 MB
    for s in samples:  # every word of the data is in the vocabulary
        ids = processor.tokenizer(s.caption)["input_ids"]
        assert processor.tokenizer.unk_token_id not in ids


def _deep_config(tmp_path, **overrides):
    from vlmlib.organisms.recipes import RecipeConfig

    options = dict(
        size="test",
        batch_size=3,
        text_steps=3,
        vision_steps=3,
        align_steps=3,
        tune_steps=4,
        warmup=1,
        eval_every=2,
        eval_samples=9,
        text_replay=0.3,
        caption_fraction=0.3,
        checkpoint_minutes=0.0,  # a checkpoint after every step
    )
    return RecipeConfig(**{**options, **overrides})


@pytest.mark.parametrize("family", ["paligemma", "qwen2vl"])
def test_deep_recipe_resumes_a_killed_run_exactly(family, tmp_path, monkeypatch):
    from vlmlib.organisms import recipes

    whole, _, whole_log = recipes.train(_deep_config(tmp_path, family=family), verbose=False)
    real_step, calls = recipes.step_optimizer, []

    def dies_at_the_eighth_step(*args):  # a kill in the middle of the align stage's step 2
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(recipes, "step_optimizer", dies_at_the_eighth_step)
    config = _deep_config(tmp_path, family=family, checkpoint=str(tmp_path / "ck"), out=str(tmp_path / "out"))
    with pytest.raises(KeyboardInterrupt):
        recipes.train(config, verbose=False)
    state = json.loads((tmp_path / "ck" / "current" / "state.json").read_text())
    assert (state["stage"], state["step"]) == ("align", 1)
    monkeypatch.setattr(recipes, "step_optimizer", real_step)
    resumed, _, log = recipes.train(config, verbose=False)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log["curve"]] == [r["loss"] for r in whole_log["curve"]]
    assert [e["accuracy"] for e in log["evals"]] == [e["accuracy"] for e in whole_log["evals"]]
    files = list((tmp_path / "ck").rglob("*"))
    assert all(f.stat().st_size < 20_000_000 for f in files if f.is_file())
    assert not (tmp_path / "ck" / ".incoming").exists() and (tmp_path / "ck" / "train.log").is_file()
    assert (tmp_path / "out" / "training_log.json").is_file()
    # a finished run run again does nothing more
    again, _, _ = recipes.train(config, verbose=False)
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)


def test_deep_recipe_refuses_a_checkpoint_of_another_configuration(tmp_path):
    from vlmlib.organisms import recipes

    config = _deep_config(tmp_path, checkpoint=str(tmp_path / "ck"), tune_steps=1, align_steps=1)
    recipes.train(config, verbose=False)
    with pytest.raises(ValueError, match="another configuration"):
        recipes.train(_deep_config(tmp_path, checkpoint=str(tmp_path / "ck"), tune_steps=2), verbose=False)


def test_deep_recipe_continues_a_finished_organism(tmp_path):
    """`continue_from` tunes a finished organism again: it starts from that organism's weights (its
    held-out accuracy at step 0 is the saved organism's), draws a part of the stream the first tune
    never saw, and keeps the first run's log; another family or seed is refused."""
    from vlmlib.organisms import recipes

    first = tmp_path / "first"
    recipes.train(_deep_config(tmp_path, out=str(first)), verbose=False)
    config = _deep_config(tmp_path, continue_from=str(first), tune_steps=2, out=str(tmp_path / "second"))
    assert recipes.stream_start(config, "tune", 0) not in {
        recipes.stream_start(_deep_config(tmp_path), s, 0) for s in recipes.STAGES
    }
    model, processor, log = recipes.train(config, verbose=False)
    start = log["evals"][0]
    assert (start["stage"], start["step"]) == ("start", 0)
    saved = type(model).from_pretrained(first, dtype=torch.float32)
    held_out = recipes.scenes_samples(9, recipes.SELECT_SEED, "test")
    report = recipes.counting_report(saved, processor, recipes.family_named("paligemma"), held_out)
    assert start["accuracy"] == report["accuracy"]
    assert log["continued_from_log"]["config"]["tune_steps"] == 4
    assert [r["stage"] for r in log["curve"]] == ["tune"] * len(log["curve"])
    with pytest.raises(ValueError, match="give the same --seed"):
        recipes.train(_deep_config(tmp_path, continue_from=str(first), seed=3), verbose=False)
    with pytest.raises(ValueError, match="not a finished organism"):
        recipes.train(_deep_config(tmp_path, continue_from=str(tmp_path)), verbose=False)
    # the tower's depth must match too; a log from before `tower_layers` existed means 12 layers
    with pytest.raises(ValueError, match="give the same --tower-layers"):
        recipes.train(_deep_config(tmp_path, continue_from=str(first), tower_layers=12), verbose=False)
    first_log = json.loads((first / "training_log.json").read_text())
    del first_log["config"]["tower_layers"]
    (first / "training_log.json").write_text(json.dumps(first_log))
    with pytest.raises(ValueError, match="tower_layers 12 organism"):
        recipes.train(_deep_config(tmp_path, continue_from=str(first)), verbose=False)
