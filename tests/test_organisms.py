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
