"""The logit lens against independent references: the model's own logits, its embeddings, transformers'
`output_hidden_states`, and hand-computed image-token reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_family import VIPLLAVA, tiny_vipllava

from vlmlib import load_model, register_family, shapes_samples, wrap_model
from vlmlib.families import unregister_family
from vlmlib.lens import LensResult, decode, final_norm, final_states, fit_tuned_lens, logit_lens

FAMILIES = ["paligemma-random", "qwen2vl-random"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module", params=FAMILIES)
def lm(request):
    return load_model(request.param, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def samples():
    return shapes_samples(3, seed=11)


def reference(logits: torch.Tensor, ids: torch.Tensor) -> dict[str, np.ndarray]:
    """The four measures written out another way: log-softmax, a sort for the rank."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    order = logits.argsort(dim=-1, descending=True)
    rank = (order == ids.unsqueeze(-1)).float().argmax(dim=-1) + 1
    answer = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    best_other = logits.scatter(-1, ids.unsqueeze(-1), -1e30).max(dim=-1).values
    return {
        "logprob": logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1).numpy(),
        "rank": rank.numpy(),
        "correct": (rank == 1).numpy(),
        "logit_diff": (answer - best_other).numpy(),
    }


def assert_measures(result: LensResult, read: str, layer: int, expected: dict[str, np.ndarray]):
    got = {m: v[layer] for m, v in result.reads[read].items()}
    np.testing.assert_allclose(got["logprob"], expected["logprob"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["logit_diff"], expected["logit_diff"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["rank"], expected["rank"], rtol=1e-6)
    np.testing.assert_array_equal(got["correct"], expected["correct"])


@torch.no_grad()
def forward_with_states(lm, samples):
    inputs = lm.encode_samples(samples)
    out = lm.model(**inputs, use_cache=False, output_hidden_states=True)
    rows = torch.arange(len(samples))
    return inputs, out, rows, lm.last_index(inputs)


def answer_ids(lm, samples):
    return torch.tensor([lm.token_id(s.answer) for s in samples])


@torch.no_grad()
def test_the_last_layer_is_the_models_own_output(lm, samples):
    inputs, out, rows, last = forward_with_states(lm, samples)
    states = final_states(lm, inputs)
    assert states.shape == (lm.num_layers + 1, len(samples), lm.model.config.get_text_config().hidden_size)
    model_logits = out.logits[rows, last].float()
    torch.testing.assert_close(decode(lm, states[-1]), model_logits, rtol=1e-5, atol=1e-5)
    result = logit_lens(lm, samples, target="answer")
    assert result.n_layers == lm.num_layers and result.n_samples == len(samples)
    assert_measures(result, "final", lm.num_layers, reference(model_logits, answer_ids(lm, samples)))


@torch.no_grad()
def test_layer_0_decodes_the_embeddings(lm, samples):
    inputs, out, rows, last = forward_with_states(lm, samples)
    final_tokens = inputs["input_ids"][rows, last]  # a text token: no image was merged there
    embedded = lm.model.get_input_embeddings()(final_tokens)  # Gemma's scale is inside its embedding
    logits = lm.model.get_output_embeddings()(final_norm(lm)(embedded)).float()
    result = logit_lens(lm, samples, target="answer")
    assert_measures(result, "final", 0, reference(logits, answer_ids(lm, samples)))


@torch.no_grad()
def test_middle_layers_match_output_hidden_states(lm, samples):
    """transformers' hidden_states[l] is H^(l) (raw) for l < L; hidden_states[L] is after the final norm."""
    inputs, out, rows, last = forward_with_states(lm, samples)
    L = lm.num_layers
    states = final_states(lm, inputs)
    for layer in range(L):
        torch.testing.assert_close(states[layer], out.hidden_states[layer][rows, last], rtol=0, atol=0)
    torch.testing.assert_close(final_norm(lm)(states[L]), out.hidden_states[L][rows, last])
    assert not torch.allclose(states[L], out.hidden_states[L][rows, last])
    middle = L // 2
    hidden = out.hidden_states[middle][rows, last]
    logits = lm.model.get_output_embeddings()(final_norm(lm)(hidden)).float()
    result = logit_lens(lm, samples, target="answer")
    assert_measures(result, "final", middle, reference(logits, answer_ids(lm, samples)))


@torch.no_grad()
def test_image_read_is_the_mean_over_image_tokens(lm, samples):
    inputs, out, rows, last = forward_with_states(lm, samples)
    result = logit_lens(lm, samples, target="answer", image=True)
    ids = answer_ids(lm, samples)
    vision = lm.vision_mask(inputs)
    for layer in (0, lm.num_layers // 2, lm.num_layers - 1):
        per_row = {m: [] for m in ("logprob", "rank", "correct", "logit_diff")}
        for r in range(len(samples)):
            hidden = out.hidden_states[layer][r][vision[r]]
            logits = lm.model.get_output_embeddings()(final_norm(lm)(hidden)).float()
            ref = reference(logits, ids[r].expand(len(hidden)))
            for m in per_row:
                per_row[m].append(ref[m].astype(float).mean())
        got = {m: v[layer] for m, v in result.reads["image"].items()}
        for m in per_row:
            np.testing.assert_allclose(got[m], per_row[m], rtol=1e-4, atol=1e-4, err_msg=m)
    # the last layer's image outputs feed nothing, but they are read like every other layer's
    assert np.isfinite(result.reads["image"]["logprob"]).all()


def test_batches_and_targets(lm, samples):
    one = logit_lens(lm, samples, batch_size=1, target="answer", image=True)
    whole = logit_lens(lm, samples, batch_size=3, target="answer", image=True)
    for read in ("final", "image"):
        for m in one.reads[read]:
            np.testing.assert_allclose(one.reads[read][m], whole.reads[read][m], rtol=1e-4, atol=1e-4)
    top1 = logit_lens(lm, samples, target="top1")
    assert top1.target == "top1" and top1.accuracy()[-1] == 1.0
    assert (top1.reads["final"]["rank"][-1] == 1).all()
    assert top1.first_decodable_layer(1.0) is not None
    rows = whole.rows()
    assert len(rows) == 2 * (lm.num_layers + 1)
    assert {"read", "layer", "logprob", "logprob_se", "rank", "correct", "logit_diff_se"} <= set(rows[0])
    with pytest.raises(ValueError, match="unknown target"):
        logit_lens(lm, samples, target="best")


@torch.no_grad()
def test_soft_capped_logits_are_decoded_as_the_model_does():
    """A Gemma 2 head soft-caps its logits: the lens does what the model's forward does."""
    lm = load_model("paligemma-random", device="cpu", dtype="float32")
    lm.model.config.get_text_config().final_logit_softcapping = 0.5
    samples = shapes_samples(2, seed=3)
    inputs, out, rows, last = forward_with_states(lm, samples)
    assert out.logits.abs().max() <= 0.5
    torch.testing.assert_close(decode(lm, final_states(lm, inputs)[-1]), out.logits[rows, last].float())


@torch.no_grad()
def test_a_family_added_in_one_file():
    register_family(VIPLLAVA)
    try:
        model, processor = tiny_vipllava()
        llava = wrap_model(model, processor, "vipllava-toy", False, "", torch.device("cpu"), torch.float32)
        samples = shapes_samples(2, seed=4)
        inputs, out, rows, last = forward_with_states(llava, samples)
        result = logit_lens(llava, samples, target="answer")
        ref = reference(out.logits[rows, last].float(), answer_ids(llava, samples))
        assert_measures(result, "final", llava.num_layers, ref)
    finally:
        unregister_family(VIPLLAVA.name)


def test_first_decodable_layer_rule():
    def made(accuracy):
        correct = np.array([[1.0] * round(a * 10) + [0.0] * (10 - round(a * 10)) for a in accuracy])
        reads = {"final": {m: correct for m in ("logprob", "rank", "correct", "logit_diff")}}
        return LensResult(reads, target="answer")

    # a transient hit at layer 1 does not count; from layer 3 on it stays >= 0.9 x 0.8
    assert made([0.0, 0.8, 0.1, 0.8, 0.8, 0.8]).first_decodable_layer(0.9) == 3
    assert made([0.0, 0.8, 0.1, 0.8, 0.7, 0.8]).first_decodable_layer(0.9) == 5  # a dip starts it again
    assert made([0.5, 0.5, 0.5]).first_decodable_layer(0.9) == 0
    assert made([0.3, 0.0, 0.0]).first_decodable_layer(0.9) is None  # never decodable at the output
    with pytest.raises(ValueError, match="threshold"):
        made([0.5]).first_decodable_layer(0.0)


@torch.no_grad()
def test_tuned_lens_is_fitted_on_held_out_samples(lm, samples):
    train = shapes_samples(12, seed=99)
    tuned = fit_tuned_lens(lm, train, ridge=1.0)
    L = lm.num_layers
    assert torch.equal(tuned.weight[L], torch.eye(tuned.weight.shape[-1]))
    with pytest.raises(ValueError, match="held-out"):
        logit_lens(lm, train[:2], tuned=tuned)
    plain = logit_lens(lm, samples, target="answer")
    result = logit_lens(lm, samples, target="answer", tuned=tuned)
    assert result.lens == "tuned"
    for m in plain.reads["final"]:  # the last map is the identity
        np.testing.assert_allclose(
            result.reads["final"][m][L], plain.reads["final"][m][L], rtol=1e-5, atol=1e-5
        )
    # least squares: on its own training states the fitted map is at least as close as the identity
    states = final_states(lm, lm.encode_samples(train))
    for layer in range(L):
        fitted = tuned.translate(layer, states[layer])
        assert (fitted - states[L]).norm() <= (states[layer] - states[L]).norm() * (1 + 1e-5)
