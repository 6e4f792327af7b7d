"""Chapter 9, when text and image disagree: the hint's token span for both families, hint variants of any
counting dataset, knockouts of other key sets than the image's, counterfactual pairs that differ in the
text, the rule of the text-dominance claim, and the chapter run through the runner on a random model."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from vlmlib import counterfactual_experiment, load_samples, wrap_model
from vlmlib.data import DatasetError, Sample, shapes_samples
from vlmlib.data.hints import HintedSample, conflicting_count, disagreement, hint_variants, unhinted_question
from vlmlib.data.scenes import hint_variants as scene_hint_variants
from vlmlib.data.scenes import scenes_vocabulary
from vlmlib.hints import hint_experiment, hint_mask, hint_span, variant_sets, writable
from vlmlib.interventions.counterfactual import PairError
from vlmlib.interventions.knockout import Knockout, KnockoutConfigError, knockout_experiment, layer_sweep
from vlmlib.interventions.resume import final_logits
from vlmlib.lens import lens_token_logits
from vlmlib.organisms.builders import tiny_paligemma, tiny_qwen2vl
from vlmlib.paper.chapters import chapter_spec, conflict
from vlmlib.paper.claims import FAILS, HOLDS, NOT_COMPARABLE, NOT_ROBUST, UNRESOLVED, evaluate

PROJECT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["paligemma", "qwen2vl"])
def scene_lm(request):
    """A tiny random model of each family whose word-level vocabulary holds the hint's words."""
    builder = {"paligemma": tiny_paligemma, "qwen2vl": tiny_qwen2vl}[request.param]
    net, processor = builder(vocabulary=scenes_vocabulary())
    return wrap_model(
        net, processor, f"{request.param}-scenes-words", False, "", torch.device("cpu"), torch.float32
    )


@pytest.fixture(scope="module")
def scenes():
    return load_samples("scenes", 6)


# ---------------------------------------------------------------- where the hint is


def test_span_is_what_the_hint_adds_and_is_trimmed_where_the_next_word_changes():
    # word-level: exactly the tokens between the common beginning and end
    assert hint_span([1, 2, 7, 8, 9, 3, 4], [1, 2, 3, 4]) == (2, 5)
    # byte-level BPE writes "How" as " How" after the hint: that token differs too, and is trimmed off
    vocab = {
        1: "<img>",
        2: "There",
        3: " are",
        4: " 4",
        5: " objects",
        6: " .",
        7: " How",
        8: "How",
        9: " many",
    }

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    with_hint, without = [1, 2, 3, 4, 5, 6, 7, 9], [1, 8, 9]
    assert hint_span(with_hint, without) == (1, 7)  # untrimmed: the hint and " How"
    assert hint_span(with_hint, without, "There are 4 objects .", decode) == (1, 6)
    # unknown words cannot be read back: the region is kept as it is
    assert hint_span(with_hint, without, "Il y a 4 objets .", decode) == (1, 7)
    with pytest.raises(ValueError, match="adds no token"):
        hint_span([1, 2], [1, 2])


def test_hint_mask_finds_the_hint_in_both_families(scene_lm, scenes):
    variants = variant_sets(scenes)
    batch = variants["conflict"][:3] + variants["absent"][:1]
    inputs = scene_lm.encode_samples(batch)
    mask = hint_mask(scene_lm, batch, inputs)
    tokenizer = scene_lm.processor.tokenizer
    for row, sample in enumerate(batch[:3]):
        words = tokenizer.convert_ids_to_tokens(inputs["input_ids"][row][mask[row]].tolist())
        assert " ".join(words) == sample.hint  # "There are 7 objects ."
    assert not mask[3].any()  # no hint, no positions
    assert not (mask & scene_lm.vision_mask(inputs)).any()


def test_hint_mask_on_words_the_tokenizer_does_not_know(lm, scenes):
    """The book's random models lack "There" and ".": the span is still the five tokens the hint adds."""
    sample = hint_variants(scenes[0])["conflict"]
    inputs = lm.encode_samples([sample])
    mask = hint_mask(lm, [sample], inputs)
    assert int(mask.sum()) == 5
    bare = lm.encode_samples([hint_variants(scenes[0])["absent"]])
    assert inputs["input_ids"].shape[1] - bare["input_ids"].shape[1] == 5


# ---------------------------------------------------------------- hint variants of any counting dataset


def test_hint_variants_of_scenes_and_of_any_counting_sample(scenes):
    assert {k: v.question for k, v in hint_variants(scenes[0]).items()} == {
        k: v.question for k, v in scene_hint_variants(scenes[0]).items()
    }
    shape = shapes_samples(3)[1]
    variants = hint_variants(shape)
    assert isinstance(variants["conflict"], HintedSample) and variants["conflict"].hint_kind == "conflict"
    assert variants["conflict"].hint_count != int(shape.answer)
    assert variants["conflict"].question == f"{variants['conflict'].hint} {shape.question}"
    assert variants["agree"].hint_count == int(shape.answer) and variants["absent"].question == shape.question
    assert conflicting_count(shape) == conflicting_count(shape)  # the same every time
    assert unhinted_question(variants["conflict"]) == shape.question
    assert disagreement(variants["conflict"]) == abs(variants["conflict"].hint_count - int(shape.answer)) > 0
    assert disagreement(variants["agree"]) == 0
    for answer in ("dog", None, "12", "0"):
        with pytest.raises(DatasetError, match="counts 1-9"):
            hint_variants(Sample(image=shape.image, answer=answer, id="x"))


# ---------------------------------------------------------------- knockout of other keys


def _hint_keys(lm, inputs, batch):
    return hint_mask(lm, batch, inputs)


def test_hiding_no_key_changes_nothing_and_named_image_keys_are_the_image_knockout(lm, scenes):
    conflicted = variant_sets(scenes[:3])["conflict"]
    L = lm.num_layers
    # a key set with no positions: every answer as in the clean run (up to the rounding of a stacked pass)
    nothing = {
        "none": lambda lm_, inputs, batch: torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
    }
    kos = [Knockout(tuple(range(L)), q, keys="none") for q in ("final", "text", "all")]
    result = knockout_experiment(lm, conflicted, kos, batch_size=3, keys=nothing, lean=False)
    for m in ("logprob", "logit_diff", "top1"):
        np.testing.assert_allclose(result.knocked[m], np.stack([result.clean[m]] * len(kos)), atol=1e-5)
    # the image keys under another name: the same numbers as the default image knockout
    named = {"pixels": lambda lm_, inputs, batch: lm_.vision_mask(inputs)}
    default = layer_sweep(L, "text", schemes=("layer", "onwards"))
    renamed = [replace(ko, keys="pixels") for ko in default]
    a = knockout_experiment(lm, conflicted, default, batch_size=3)
    b = knockout_experiment(lm, conflicted, renamed, batch_size=3, keys=named)
    for m in ("logprob", "logit_diff", "top1"):
        np.testing.assert_allclose(a.knocked[m], b.knocked[m], rtol=0, atol=1e-6)
    # "all" queries never block the image from itself: hiding it from all positions is the text knockout
    c = knockout_experiment(lm, conflicted, [replace(ko, queries="all") for ko in default], batch_size=3)
    np.testing.assert_allclose(a.knocked["logprob"], c.knocked["logprob"], rtol=0, atol=1e-6)
    with pytest.raises(KnockoutConfigError, match="not given"):
        knockout_experiment(lm, conflicted, [Knockout((0,), "final", keys="hint")])


def test_hiding_the_hint_changes_the_answer_and_rows_name_the_keys(scene_lm, scenes):
    conflicted = variant_sets(scenes[:4])["conflict"]
    kos = [Knockout(tuple(range(scene_lm.num_layers)), "all", "onwards", "0-", keys="hint")]
    result = knockout_experiment(scene_lm, conflicted, kos, batch_size=4, keys={"hint": _hint_keys})
    assert result.rows()[0]["keys"] == "hint" and result.select("all", "onwards", keys="hint")
    assert not np.allclose(result.knocked["logprob"][0], result.clean["logprob"])


# ---------------------------------------------------------------- the hint experiment, lens, patching


def test_hint_experiment_lens_and_patching_between_conflict_and_agreement(scene_lm, scenes):
    kept, dropped = writable(scene_lm, scenes)
    assert kept and not dropped  # the scenes vocabulary writes 1-9
    result = hint_experiment(scene_lm, kept, batch_size=4)
    summary = result.summary()
    for kind in ("absent", "agree", "conflict"):
        s = summary[kind]
        assert s["n"] == len(kept) and abs(s["correct"] + s["follows_claim"] + s["other"] - 1) < 1e-9
    assert sum(s["n"] for s in result.by_disagreement().values()) == len(kept)
    sets = variant_sets(kept)
    ids = np.stack([result.true_ids, result.claimed_ids], axis=1)
    lens = lens_token_logits(scene_lm, sets["conflict"], ids, batch_size=4)
    assert lens.shape == (scene_lm.num_layers + 1, len(kept), 2)
    logits = final_logits(scene_lm, scene_lm.encode_samples(sets["conflict"])).detach().double().numpy()
    last = logits[np.arange(len(kept))[:, None], ids]
    np.testing.assert_allclose(lens[-1], last, rtol=1e-4, atol=1e-4)  # the last state is the output
    np.testing.assert_allclose(lens[-1, :, 0] - lens[-1, :, 1], result.logit_diff["conflict"], atol=1e-4)
    pairs = [(a, replace(c, answer=str(c.hint_count))) for a, c in zip(sets["agree"], sets["conflict"])]
    cf = counterfactual_experiment(
        scene_lm,
        pairs,
        positions=("hint", "image", "final", "all"),
        batch_size=3,
        min_gap=0.0,
        differ="text",
        extra_positions={"hint": _hint_keys},
    )
    for k, patch in enumerate(cf.patches):
        if patch.positions == "all":  # the whole residual stream: the agreement run's answer
            np.testing.assert_allclose(cf.ld_patched[k], cf.ld_clean, atol=1e-4)
        if patch.positions == "image" and scene_lm.family.name == "qwen2vl":
            # causal attention: the image tokens come before the hint, so both runs hold the same states there
            np.testing.assert_allclose(cf.ld_patched[k], cf.ld_corrupt, atol=1e-5)
    with pytest.raises(PairError, match="questions differ"):
        counterfactual_experiment(scene_lm, pairs[:1])  # pairs that differ in the text need differ="text"


# ---------------------------------------------------------------- the rule


def _share(follows, correct, n=200, lead_se=None):
    se = lambda p: (p * (1 - p) / n) ** 0.5  # noqa: E731
    return {
        "n": n,
        "correct": correct,
        "correct_se": se(correct),
        "follows_claim": follows,
        "follows_claim_se": se(follows),
        "other": 1 - follows - correct,
        "other_se": 0.0,
        "claim_minus_image": follows - correct,
        "claim_minus_image_se": lead_se if lead_se is not None else 0.06,
        "logit_diff": 0.0,
        "logit_diff_se": 0.0,
    }


def _results(conflict_share, absent_correct=0.8, seen=True, size_one=None, trained=True):
    summary = {"absent": _share(0.05, absent_correct), "agree": _share(0.0, 0.95), "conflict": conflict_share}
    return {
        "trained": trained,
        "family": "paligemma",
        "chance": 1 / 9,
        "hint_training": {"seen": seen, "why": "..."},
        "preference": {"summary": summary, "by_disagreement": {"1": size_one or conflict_share}},
    }


@pytest.mark.parametrize(
    ("results", "verdict", "reason"),
    [
        (_results(_share(0.6, 0.3)), HOLDS, "a false hint wins"),
        (_results(_share(0.2, 0.7)), FAILS, "the image wins"),
        (_results(_share(0.42, 0.40)), UNRESOLVED, "about as often"),
        (_results(_share(0.6, 0.3), seen=False), NOT_COMPARABLE, "never saw a textual hint"),
        (_results(_share(0.6, 0.3), absent_correct=0.12), NOT_COMPARABLE, "does not read the count"),
        (_results(_share(0.6, 0.3), seen=None), HOLDS, "a false hint wins"),  # a released checkpoint
        (_results(_share(0.6, 0.3), trained=False), NOT_COMPARABLE, "random weights"),
        (_results(_share(0.2, 0.7), size_one=_share(0.7, 0.2, 40, 0.1)), NOT_ROBUST, "disagreements of one"),
    ],
)
def test_the_rule_of_text_dominance(results, verdict, reason):
    found = evaluate(conflict.CLAIM, results)
    assert found["verdict"] == verdict and reason in found["reason"], found


def test_what_the_model_learnt_is_read_from_its_training_log(tmp_path):
    assert conflict.hint_training("paligemma-shapes")["seen"] is False
    (tmp_path / "training_log.json").write_text(
        json.dumps({"config": {"hint_rate": 0.3, "hint_truth": 0.85}})
    )
    assert conflict.hint_training(str(tmp_path))["seen"] is True
    (tmp_path / "training_log.json").write_text(json.dumps({"config": {"seed": 0}}))
    assert conflict.hint_training(str(tmp_path))["seen"] is False
    assert conflict.hint_training(str(tmp_path / "elsewhere"))["seen"] is None
    assert chapter_spec("09_text_image_conflict").claims == (conflict.CLAIM,)


# ---------------------------------------------------------------- the chapter, through the runner


def test_the_chapter_runs_through_the_runner_on_a_random_model(tmp_path):
    args = [
        "run",
        "09",
        "--only",
        "paligemma",
        "--model",
        "paligemma=paligemma-random",
        "--out",
        "out",
        "--no-progress",
        "--no-replicates",
        "-p",
        "n_samples=6",
        "-p",
        "batch_size=3",
        "-p",
        "knockout_samples=2",
        "-p",
        "counterfactual_pairs=2",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "vlmlib", *args, "--root", str(PROJECT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "paligemma" / "09_text_image_conflict.json").read_text())
    assert results["preference"]["summary"]["conflict"]["n"] == results["params"]["n_samples"]
    assert {r["keys"] for r in results["knockout_rows"]} == {"hint", "image"}
    assert {r["positions"] for r in results["counterfactual"]["rows"]} == {"hint", "image", "final"}
    (finding,) = results["findings"]
    assert finding["claim_id"] == "text-dominates" and finding["verdict"] == NOT_COMPARABLE
