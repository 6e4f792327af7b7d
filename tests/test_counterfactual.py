"""Counterfactual patching: whole states recover the clean run, inert positions change nothing, an identity
patch is bit-identical, bad pairs are refused, and the standard errors are paired."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from vlmlib import counterfactual_experiment, load_model, shapes_samples
from vlmlib.interventions.counterfactual import (
    POSITION_CLASSES,
    CounterfactualResult,
    PairError,
    check_layouts,
    counterfactual_patches,
    patched_logits,
    position_classes,
    prepare_runs,
)
from vlmlib.interventions.patching import Patch

FAMILIES = ["paligemma-random", "qwen2vl-random"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return load_model(request.param, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pairs():
    """Three (clean, corrupted) pairs of rendered scenes; random models do not care what is drawn, so a
    corrupted answer that happens to equal the clean one is moved to another count."""
    samples = shapes_samples(6, seed=1)
    out = []
    for clean, corrupt in zip(samples[0::2], samples[1::2]):
        if corrupt.answer == clean.answer:
            corrupt = replace(corrupt, answer=str(int(clean.answer) % 6 + 1))
        out.append((clean, corrupt))
    return out


def test_whole_state_recovers_the_clean_run_at_every_layer(lm, pairs):
    result = counterfactual_experiment(lm, pairs, positions=["all"], min_gap=1e-3)
    assert len(result.patches) == lm.num_layers
    assert result.small_gap.sum() == 0  # the pairs below are far enough apart for a per-pair ratio
    for k in range(len(result.patches)):
        np.testing.assert_allclose(result.ld_patched[k], result.ld_clean, atol=1e-5)
        np.testing.assert_allclose(result.recovery[k], 1.0, atol=1e-3)
    final = counterfactual_experiment(lm, pairs, layers=[-1], positions=["final"], min_gap=1e-3)
    np.testing.assert_allclose(final.recovery[0], 1.0, atol=1e-3)  # the last layer's output is read there


def test_last_layer_image_and_question_outputs_change_nothing(lm, pairs):
    """No later layer reads the last layer's output at any position but the final one."""
    result = counterfactual_experiment(
        lm,
        pairs,
        kinds=("resid", "attn", "mlp"),
        layers=[lm.num_layers - 1],
        positions=["image", "question"],
        max_rows=len(pairs),  # one patched copy per pass: the same batch shape as the corrupted run
    )
    assert len(result.patches) == 6
    assert np.array_equal(result.ld_change, np.zeros_like(result.ld_change))
    for row in result.rows():
        assert row["ld_change"] == 0.0 and row["ld_change_se"] == 0.0


@torch.no_grad()
def test_clean_patched_into_clean_is_bit_identical(lm, pairs):
    inputs = lm.encode_samples([c for c, _ in pairs])
    patches = counterfactual_patches(lm, ("resid", "attn", "mlp"))
    clean, corrupt, corrupt_inputs = prepare_runs(lm, inputs, inputs, patches)
    assert torch.equal(clean.logits, corrupt.logits)
    for patch in patches[:: max(1, len(patches) // 24)]:  # one pass each, lean resume included
        logits = patched_logits(lm, clean, corrupt, corrupt_inputs, [patch])
        assert torch.equal(logits[0], corrupt.logits), patch.name
    stacked = patched_logits(lm, clean, corrupt, corrupt_inputs, patches[:6])  # stacked: float round-off
    torch.testing.assert_close(stacked, corrupt.logits.expand_as(stacked), rtol=1e-5, atol=1e-5)


def test_position_classes_partition_the_prompt(lm, pairs):
    inputs = lm.encode_samples([c for c, _ in pairs])
    masks = position_classes(lm, inputs)
    parts = masks["image"].int() + masks["question"].int() + masks["final"].int()
    assert torch.equal(parts, masks["all"].int())
    assert (masks["final"].sum(dim=1) == 1).all() and (masks["image"].sum(dim=1) > 0).all()
    assert (masks["question"].sum(dim=1) > 0).all()


def test_bad_pairs_are_refused(lm, pairs):
    clean, corrupt = pairs[0]
    with pytest.raises(PairError, match=r"pair 1 .*the same \('3'\)"):
        counterfactual_experiment(lm, [pairs[0], (replace(clean, answer="3"), replace(corrupt, answer="3"))])
    with pytest.raises(PairError, match="begin with the same token"):  # both unknown to the word tokenizer
        counterfactual_experiment(lm, [(replace(clean, answer="10"), replace(corrupt, answer="12"))])
    with pytest.raises(PairError, match="questions differ"):
        counterfactual_experiment(lm, [(clean, replace(corrupt, question="How many circles ?"))])
    with pytest.raises(PairError, match="need an answer"):
        counterfactual_experiment(lm, [(clean, replace(corrupt, answer=None))])
    # token layouts: a different prompt, checked on the encodings themselves
    a = lm.encode_samples([clean, clean])
    b = lm.encode_samples([corrupt, replace(corrupt, question="How many objects are in it ?")])
    with pytest.raises(
        PairError, match=r"pair 1 \(shapes-test-1-0\): the clean and corrupted prompts differ"
    ):
        check_layouts(a, b, ["pair 0 (x)", "pair 1 (shapes-test-1-0)"])
    with pytest.raises(ValueError, match="position class"):
        counterfactual_patches(lm, positions=["vision"])
    with pytest.raises(ValueError, match="outside the decoder"):
        counterfactual_patches(lm, layers=[lm.num_layers])


def test_different_numbers_of_image_tokens_are_refused():
    lm = load_model("qwen2vl-random", device="cpu", dtype="float32")  # dynamic resolution
    samples = shapes_samples(4, seed=2)
    wide = replace(
        samples[3], image=samples[3].image.resize((128, 64)), answer=str(int(samples[2].answer) % 6 + 1)
    )
    pairs = [
        (samples[0], replace(samples[1], answer=str(int(samples[0].answer) % 6 + 1))),
        (samples[2], wide),
    ]
    with pytest.raises(PairError, match=r"pair 1 \(shapes-test-2-2\): .*33 vs 27 tokens.*image tokens"):
        counterfactual_experiment(lm, pairs)


@torch.no_grad()
def test_scores_and_paired_standard_errors_by_hand(lm, pairs):
    result = counterfactual_experiment(lm, pairs, layers=[1], positions=POSITION_CLASSES, min_gap=1e-3)
    # LD of the clean and corrupted runs, from plain forward passes
    for which, ld in ((0, result.ld_clean), (1, result.ld_corrupt)):
        inputs = lm.encode_samples([p[which] for p in pairs])
        logits = lm.model(**inputs, use_cache=False).logits[torch.arange(3), lm.last_index(inputs)]
        for i, (clean, corrupt) in enumerate(pairs):
            expected = logits[i, lm.token_id(clean.answer)] - logits[i, lm.token_id(corrupt.answer)]
            assert ld[i] == pytest.approx(float(expected), abs=1e-5)
    n = 3
    for k, row in enumerate(result.rows()):
        change = [result.ld_patched[k][i] - result.ld_corrupt[i] for i in range(n)]
        mean = sum(change) / n
        se = (sum((c - mean) ** 2 for c in change) / (n - 1)) ** 0.5 / n**0.5
        assert row["ld_change"] == pytest.approx(mean, abs=1e-9)
        assert row["ld_change_se"] == pytest.approx(se, rel=1e-9, abs=1e-12)
        recovery = [change[i] / (result.ld_clean[i] - result.ld_corrupt[i]) for i in range(n)]
        rec_mean = sum(recovery) / n
        rec_se = (sum((r - rec_mean) ** 2 for r in recovery) / (n - 1)) ** 0.5 / n**0.5
        assert row["recovery"] == pytest.approx(rec_mean, rel=1e-9)
        assert row["recovery_se"] == pytest.approx(rec_se, rel=1e-9)
        assert row["n"] == 3 and row["n_recovery"] == 3 and row["n_small_gap"] == 0
        assert (row["kind"], row["layer"], row["positions"]) == ("resid", 1, POSITION_CLASSES[k])
        # not the unpaired s.e., which adds the pair-to-pair spread of both runs' LD
        unpaired = (np.var(result.ld_patched[k], ddof=1) / n + np.var(result.ld_corrupt, ddof=1) / n) ** 0.5
        if row["positions"] != "all":
            assert row["ld_change_se"] != pytest.approx(unpaired, rel=1e-3)


def test_batches_give_the_same_scores(lm, pairs):
    one = counterfactual_experiment(lm, pairs, layers=[0, 3], batch_size=1)
    whole = counterfactual_experiment(lm, pairs, layers=[0, 3], batch_size=3, max_rows=4)
    np.testing.assert_allclose(one.ld_clean, whole.ld_clean, atol=1e-5)
    np.testing.assert_allclose(one.ld_patched, whole.ld_patched, atol=1e-5)


def test_small_gap_pairs_are_left_out_of_recovery_and_counted():
    patches = [Patch("resid", (2,), (2,), "image", "resid 2 @ image")]
    result = CounterfactualResult(
        patches,
        ld_clean=np.array([1.0, 0.5005, 3.0]),
        ld_corrupt=np.array([0.0, 0.5, 1.0]),  # gaps 1, 0.0005, 2
        ld_patched=np.array([[0.5, 0.6, 2.0]]),  # changes 0.5, 0.1, 1
        min_gap=0.1,
    )
    (row,) = result.rows()
    assert row["n_recovery"] == 2 and row["n_small_gap"] == 1
    assert np.isnan(result.recovery[0, 1])
    assert row["recovery"] == pytest.approx(0.5) and row["recovery_se"] == pytest.approx(0.0)
    assert row["ld_change"] == pytest.approx((0.5 + 0.1 + 1.0) / 3)
    assert row["recovery_of_means"] == pytest.approx(((0.5 + 0.1 + 1.0) / 3) / ((1 + 0.0005 + 2) / 3))
    assert result.to_dict()["rows"][0]["layer"] == 2
