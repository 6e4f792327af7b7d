"""Attention knockout (vlmlib.interventions.knockout) on tiny random models of both families.

The reference implementation here shares nothing with the mask edit: it registers its own eager
attention function that computes the softmax weights, zeroes the (blocked query, image key) weights
and renormalises each row, a different route to the same attention when the knockout is right.
"""

import numpy as np
import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from vlmlib import (
    Knockout,
    critical_layers,
    final_logits,
    knockout_experiment,
    layer_sweep,
    load_model,
    load_samples,
)
from vlmlib.data import CAPTION_PROMPT
from vlmlib.interventions.knockout import (
    QUERY_SETS,
    KnockoutConfigError,
    answer_measures,
    blocked_pairs,
    image_knockout,
    knockout_logits,
)
from vlmlib.observation import decoder_attention
from vlmlib.paper.knockout import rows_table

FAMILIES = ["paligemma-random", "qwen2vl-random"]
REFERENCE = "vlmlib_test_knockout_reference"


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    torch.manual_seed(0)
    return load_model(request.param, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def samples():
    return load_samples("shapes", 4, seed=3)


def padded(samples):
    """A batch with right padding: one sample asks a shorter question."""
    out = list(samples)
    out[1] = type(out[1])(image=out[1].image, question=CAPTION_PROMPT, answer=out[1].answer)
    return out


# ---------------------------------------------------------------- the independent reference

_reference_cut: dict[int, torch.Tensor] = {}  # layer -> (batch, q, k) bool, read by the function below


def _reference_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention; then the weights of cut (query, key) pairs are zeroed and each row renormalised."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores.float(), dim=-1)
    cut = _reference_cut.get(module.layer_idx)
    if cut is not None:
        weights = weights.masked_fill(cut[:, None], 0.0)
        weights = weights / weights.sum(dim=-1, keepdim=True)
    out = weights.to(query.dtype) @ value
    return out.transpose(1, 2).contiguous(), weights


AttentionInterface.register(REFERENCE, _reference_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(REFERENCE, eager_mask)


def reference_logits(lm, inputs, knockout: Knockout) -> torch.Tensor:
    """Final-position logits with the knockout done by the reference, with its own position sets."""
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    image = ids == lm.model.config.image_token_id
    if knockout.queries == "text":
        queries = real & ~image
    else:
        last = real.long().cumsum(dim=1).argmax(dim=1)  # the last real position of each row
        queries = torch.nn.functional.one_hot(last, ids.shape[1]).bool()
    cut = queries[:, :, None] & image[:, None, :]
    _reference_cut.clear()
    _reference_cut.update({layer: cut for layer in knockout.layers})
    try:
        with decoder_attention(lm, REFERENCE), torch.no_grad():
            return final_logits(lm, inputs)
    finally:
        _reference_cut.clear()


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("pad", [False, True])
def test_knockout_of_no_layer_changes_nothing_bit_for_bit(lm, samples, pad):
    inputs = lm.encode_samples(padded(samples) if pad else samples)
    with torch.no_grad():
        clean = final_logits(lm, inputs)
    assert torch.equal(knockout_logits(lm, inputs, [Knockout((), "text")])[0], clean)
    nothing_cut = {
        layer: torch.zeros(*inputs["input_ids"].shape, inputs["input_ids"].shape[1], dtype=torch.bool)
        for layer in range(lm.num_layers)
    }
    with image_knockout(lm, nothing_cut), torch.no_grad():
        assert torch.equal(final_logits(lm, inputs), clean)


@pytest.mark.parametrize("pad", [False, True])
def test_every_layer_from_text_equals_image_invisible_to_text(lm, samples, pad):
    inputs = lm.encode_samples(padded(samples) if pad else samples)
    everything = Knockout(tuple(range(lm.num_layers)), "text")
    ours = knockout_logits(lm, inputs, [everything])[0]
    reference = reference_logits(lm, inputs, everything)
    with torch.no_grad():
        clean = final_logits(lm, inputs)
    assert (ours - clean).abs().max() > 1e-2  # the knockout does something on this model
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    # The reference itself is attention: with nothing cut it is the unchanged model.
    torch.testing.assert_close(reference_logits(lm, inputs, Knockout(())), clean, atol=1e-4, rtol=1e-4)


def test_every_layer_from_text_makes_the_answer_blind_to_the_image(lm, samples):
    """No text position reads an image token in any layer: the logits cannot depend on the image."""
    same_question = [samples[0], type(samples[0])(image=samples[2].image, question=samples[0].question)]
    inputs = lm.encode_samples(same_question)
    everything = Knockout(tuple(range(lm.num_layers)), "text")
    knocked = knockout_logits(lm, inputs, [everything])[0]
    with torch.no_grad():
        clean = final_logits(lm, inputs)
    assert (clean[0] - clean[1]).abs().max() > 1e-3  # the two images give different answers normally
    torch.testing.assert_close(knocked[0], knocked[1], atol=1e-5, rtol=1e-5)
    # Blocking every layer but one lets the image back in through that layer.
    one_open = Knockout(tuple(range(1, lm.num_layers)), "text")
    leaky = knockout_logits(lm, inputs, [one_open])[0]
    assert (leaky[0] - leaky[1]).abs().max() > 1e-4


@pytest.mark.parametrize("pad", [False, True])
def test_independent_implementation_agrees_on_random_knockouts(lm, samples, pad):
    inputs = lm.encode_samples(padded(samples) if pad else samples)
    rng = np.random.default_rng(7)
    knockouts = []
    for queries in ("final", "text", "final", "text"):
        layers = rng.choice(lm.num_layers, size=rng.integers(1, lm.num_layers), replace=False)
        knockouts.append(Knockout(tuple(int(x) for x in layers), queries))
    ours = knockout_logits(lm, inputs, knockouts)  # all four in one pass, along the batch
    with torch.no_grad():
        clean = final_logits(lm, inputs)
    for k, ko in enumerate(knockouts):
        assert (ours[k] - clean).abs().max() > 1e-4, ko.name
        torch.testing.assert_close(ours[k], reference_logits(lm, inputs, ko), atol=1e-4, rtol=1e-4)


def test_eager_attention_float_masks_give_the_same_knockout(lm, samples):
    """transformers hands eager attention an additive float mask and SDPA a bool one (or none)."""
    inputs = lm.encode_samples(padded(samples))
    knockouts = [Knockout((0, 2), "final"), Knockout((1,), "text")]
    sdpa = knockout_logits(lm, inputs, knockouts)
    with decoder_attention(lm, "eager"):
        eager = knockout_logits(lm, inputs, knockouts)
    torch.testing.assert_close(eager, sdpa, atol=1e-4, rtol=1e-4)


def test_batched_knockouts_equal_one_at_a_time(lm, samples):
    inputs = lm.encode_samples(samples)
    knockouts = layer_sweep(lm.num_layers, "final", window=3)[:3]
    together = knockout_logits(lm, inputs, knockouts)
    for k, ko in enumerate(knockouts):
        torch.testing.assert_close(together[k], knockout_logits(lm, inputs, [ko])[0], atol=1e-5, rtol=1e-5)


def test_cut_pairs_are_blocked_queries_by_image_keys(lm, samples):
    inputs = lm.encode_samples(padded(samples))
    cuts = blocked_pairs(lm, inputs, [Knockout((1,), "final"), Knockout((1, 3), "text")])
    assert sorted(cuts) == [1, 3]
    batch, seq = inputs["input_ids"].shape
    image = lm.vision_mask(inputs)
    first, second = cuts[1][:batch], cuts[1][batch:]
    assert first.sum(dim=(1, 2)).tolist() == image.sum(dim=1).tolist()  # one query row per sample
    assert not second[:, image.any(dim=0)].any()  # image queries are never cut
    assert not cuts[3][:batch].any() and cuts[3][batch:].any()


def test_experiment_rows_measure_against_the_clean_run(lm, samples):
    sweep = layer_sweep(lm.num_layers, "text", window=lm.num_layers - 2)
    knockouts = [Knockout((), "final", "layer", "none")] + sweep
    result = knockout_experiment(lm, samples, knockouts, batch_size=3, target="top1", max_rows=24)
    rows = result.rows()
    assert len(rows) == len(knockouts) == 1 + lm.num_layers + 3 + lm.num_layers
    # (the empty knockout shares its pass with others: equal to the clean run up to float rounding)
    assert abs(rows[0]["delta_logprob"]) < 1e-5 and rows[0]["delta_acc"] == 0 and rows[0]["clean_acc"] == 1.0
    # The last window and "onwards" from the same layer are one run, so equal numbers.
    last_window = next(r for r in rows if r["scheme"] == "window" and r["layers"][0] == 2)
    onwards = next(r for r in rows if r["scheme"] == "onwards" and r["layers"][0] == 2)
    assert last_window["delta_logprob"] == onwards["delta_logprob"]
    # Per-sample numbers agree with a direct computation for one knockout.
    inputs = lm.encode_samples(samples)
    with torch.no_grad():
        clean = final_logits(lm, inputs)
    ids = clean.argmax(dim=-1)
    k = 3
    knocked = answer_measures(knockout_logits(lm, inputs, [knockouts[k]])[0], ids)
    expected = (knocked["logprob"] - answer_measures(clean, ids)["logprob"]).numpy()
    assert rows[k]["delta_logprob"] == pytest.approx(expected.mean(), abs=1e-5)
    assert rows[k]["delta_logprob_se"] == pytest.approx(
        expected.std(ddof=1) / np.sqrt(len(expected)), abs=1e-5
    )
    assert "| text |" in rows_table(rows[1:3])
    assert all(0 <= layer < lm.num_layers for layer in critical_layers(rows))


def test_lean_passes_measure_what_full_passes_do_and_skip_early_blocks(lm, samples):
    """Passes that resume from the clean run's state before their first knocked layer give the numbers of
    passes through the whole decoder, for single layers, windows, "onwards" and no layer, from both query
    sets, over several passes per batch; and they really leave early decoder blocks out."""
    knockouts = [ko for queries in QUERY_SETS for ko in layer_sweep(lm.num_layers, queries, window=2)]
    knockouts.append(Knockout((), "final", "layer", "none"))
    first_attn, last_attn = (
        lm.family.site_module(lm.model, "attn_weights", layer) for layer in (0, lm.num_layers - 1)
    )
    results, calls = {}, {}
    for lean in (True, False):
        counts = {"first": 0, "last": 0}
        handles = [
            first_attn.register_forward_hook(lambda *a: counts.__setitem__("first", counts["first"] + 1)),
            last_attn.register_forward_hook(lambda *a: counts.__setitem__("last", counts["last"] + 1)),
        ]
        try:  # batches of 3 and 1 sample: 11 and 4 passes
            results[lean] = knockout_experiment(
                lm, padded(samples), knockouts, batch_size=3, target="top1", max_rows=12, lean=lean
            )
        finally:
            for handle in handles:
                handle.remove()
        calls[lean] = counts
    lean, full = results[True], results[False]
    for measure in ("logprob", "logit_diff"):
        np.testing.assert_allclose(
            lean.knocked[measure], full.knocked[measure], atol=1e-5, rtol=0, err_msg=measure
        )
        np.testing.assert_array_equal(lean.clean[measure], full.clean[measure])
    np.testing.assert_array_equal(lean.knocked["correct"], full.knocked["correct"])
    assert (np.abs(full.knocked["logprob"] - full.clean["logprob"]).max(axis=1) > 1e-4).sum() > len(
        knockouts
    ) // 2
    # Results come back in the caller's order: the knockout of no layer, last, measures the clean run.
    np.testing.assert_allclose(lean.knocked["logprob"][-1], lean.clean["logprob"], atol=1e-6, rtol=0)
    assert calls[True]["last"] == calls[False]["last"]  # as many passes either way
    assert calls[True]["first"] < calls[False]["first"], calls  # ... but fewer of them ran layer 0
    assert not any("forward" in module.__dict__ for module in lm.model.modules())  # every block restored


def test_bad_knockouts_are_refused_with_the_fix(lm, samples):
    inputs = lm.encode_samples(samples[:1])
    with pytest.raises(KnockoutConfigError, match="outside the decoder"):
        knockout_logits(lm, inputs, [Knockout((lm.num_layers,), "text")])
    with pytest.raises(KnockoutConfigError, match="unknown query set"):
        knockout_logits(lm, inputs, [Knockout((0,), "image")])
    with pytest.raises(KnockoutConfigError, match="window"):
        layer_sweep(lm.num_layers, window=lm.num_layers + 1)
    with pytest.raises(KnockoutConfigError, match="no knockouts"):
        knockout_experiment(lm, samples, [])
    cuts = blocked_pairs(lm, inputs, [Knockout((0,), "text")])
    with pytest.raises(RuntimeError, match="build the cuts from the inputs"):
        with image_knockout(lm, cuts), torch.no_grad():
            final_logits(lm, lm.encode_samples(samples[:2]))


def test_replaying_the_vision_tower_changes_no_number(lm, samples):
    """Knockouts never touch the vision tower, so the clean run's tower output can stand in for it."""
    from vlmlib.interventions.knockout import recorded_output

    inputs = lm.encode_samples(samples)
    tower = lm.model.get_submodule(lm.family.vision_tower)
    with recorded_output(tower) as seen, torch.no_grad():
        final_logits(lm, inputs)
    knockouts = [Knockout((1, 2), "final"), Knockout((0,), "text"), Knockout((), "text")]
    replayed = knockout_logits(lm, inputs, knockouts, vision_output=seen[0])
    torch.testing.assert_close(replayed, knockout_logits(lm, inputs, knockouts), atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(tower)  # the tower computes again after the replay
    # A wrong replay would show: another batch's tower output changes the answer logits.
    other = lm.encode_samples(load_samples("shapes", 4, seed=11))
    with recorded_output(tower) as wrong, torch.no_grad():
        final_logits(lm, other)
    assert (knockout_logits(lm, inputs, knockouts, vision_output=wrong[0]) - replayed).abs().max() > 1e-4


def test_last_layer_from_text_is_the_last_layer_from_the_final_position(lm, samples):
    """After the last layer only the final position reaches the answer: blocking the other text
    positions there changes nothing more, so both query sets give the same logits."""
    inputs = lm.encode_samples(padded(samples))
    last = lm.num_layers - 1
    text, final = knockout_logits(lm, inputs, [Knockout((last,), "text"), Knockout((last,), "final")])
    with torch.no_grad():
        clean = final_logits(lm, inputs)
    assert (final - clean).abs().max() > 1e-4
    torch.testing.assert_close(text, final, atol=1e-5, rtol=1e-5)
    # One layer earlier the other text positions still feed the final one, and the two differ.
    text, final = knockout_logits(lm, inputs, [Knockout((last - 1,), "text"), Knockout((last - 1,), "final")])
    assert (text - final).abs().max() > 1e-4


def test_signed_changes_never_show_a_sign_on_zero():
    from vlmlib.paper.knockout import signed

    assert signed(-0.001) == "0.00" and signed(0.004) == "0.00"
    assert signed(-0.5) == "-0.50" and signed(1.234) == "+1.23" and signed(float("nan")) == "–"
