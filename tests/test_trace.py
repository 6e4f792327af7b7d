import pytest
import torch

from vlmlib import Trace


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def all_sites(lm):
    sites = ["embed.0"]
    for layer in range(lm.num_layers):
        sites += [f"resid.{layer}", f"attn.{layer}", f"mlp.{layer}", f"attn_weights.{layer}"]
    return sites + [f"vision.{layer}" for layer in range(lm.num_vision_layers)]


def editable_sites(lm):
    return [s for s in all_sites(lm) if not s.startswith("attn_weights")]


@torch.no_grad()
def test_hooks_removed_on_exit_and_after_exception(lm, samples):
    before = n_hooks(lm.model)
    inputs = lm.encode_samples(samples[:2])
    with Trace(lm, all_sites(lm)):
        assert n_hooks(lm.model) > before
        lm.forward(inputs)
    assert n_hooks(lm.model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(
            lm,
            editable_sites(lm),
            edit=lambda name, value: (
                (_ for _ in ()).throw(RuntimeError("boom")) if name == "resid.1" else value
            ),
        ):
            lm.forward(inputs)
    assert n_hooks(lm.model) == before


@torch.no_grad()
def test_traced_run_without_edits_is_bit_identical(lm, samples):
    inputs = lm.encode_samples(samples)
    clean = lm.forward(inputs).logits
    with Trace(lm, all_sites(lm)):
        traced = lm.forward(inputs).logits
    assert torch.equal(clean, traced)
    # an identity edit returns the same tensors: still bit-identical
    with Trace(lm, editable_sites(lm), edit=lambda name, value: value):
        assert torch.equal(clean, lm.forward(inputs).logits)


@torch.no_grad()
def test_residual_states_match_output_hidden_states(lm, samples):
    inputs = lm.encode_samples(samples)
    sites = ["embed.0"] + [f"resid.{layer}" for layer in range(lm.num_layers)]
    with Trace(lm, sites) as trace:
        out = lm.forward(inputs, output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == lm.num_layers + 1
    torch.testing.assert_close(trace["embed.0"], hidden[0], rtol=0, atol=0)
    for layer in range(lm.num_layers - 1):
        torch.testing.assert_close(trace[f"resid.{layer}"], hidden[layer + 1], rtol=0, atol=0)
    # transformers' last entry is after the final norm; ours is the raw output of the last layer
    last = trace[f"resid.{lm.num_layers - 1}"]
    final_norm = lm.model.get_submodule("model.language_model.norm")
    torch.testing.assert_close(final_norm(last), hidden[-1])
    assert not torch.allclose(last, hidden[-1])


@torch.no_grad()
def test_contributions_add_up_to_the_residual(lm, samples):
    inputs = lm.encode_samples(samples[:3])
    sites = ["embed.0"] + [f"{k}.{layer}" for layer in range(lm.num_layers) for k in ("resid", "attn", "mlp")]
    with Trace(lm, sites) as trace:
        lm.forward(inputs)
    previous = trace["embed.0"]
    for layer in range(lm.num_layers):
        current = trace[f"resid.{layer}"]
        torch.testing.assert_close(
            previous + trace[f"attn.{layer}"] + trace[f"mlp.{layer}"], current, rtol=1e-5, atol=1e-5
        )
        previous = current


@torch.no_grad()
def test_attention_weights_match_output_attentions(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    with Trace(lm, ["attn_weights.2"]) as trace:
        out = lm.forward(inputs, output_attentions=True)
    torch.testing.assert_close(trace["attn_weights.2"], out.attentions[2], rtol=0, atol=0)


@torch.no_grad()
def test_edit_changes_what_flows_on(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    clean = lm.forward(inputs).logits
    with Trace(
        lm, ["attn.3", "resid.3"], edit=lambda name, value: value * 0 if name == "attn.3" else value
    ) as trace:
        edited = lm.forward(inputs).logits
    assert torch.count_nonzero(trace["attn.3"]) == 0
    assert not torch.allclose(clean, edited)


@torch.no_grad()
def test_stop_ends_the_forward_pass_after_the_last_site(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    reached = []
    handle = lm.model.get_submodule(lm.family.decoder_layers)[3].register_forward_hook(
        lambda *a: reached.append(True)
    )
    try:
        with Trace(lm, ["resid.1"], stop=True) as trace:
            lm.forward(inputs)
    finally:
        handle.remove()
    assert trace["resid.1"].shape[:2] == inputs["input_ids"].shape
    assert not reached


def test_bad_sites_fail_before_any_forward(lm):
    with pytest.raises(IndexError, match="outside the model"):
        Trace(lm, [f"resid.{lm.num_layers}"])
    with pytest.raises(IndexError, match="vision has layers"):
        Trace(lm, [f"vision.{lm.num_vision_layers}"])
    with pytest.raises(ValueError, match="unknown site kind"):
        Trace(lm, ["residual.1"])
    with pytest.raises(ValueError, match="kind.layer"):
        Trace(lm, ["resid"])


@torch.no_grad()
def test_attention_weights_need_eager(samples):
    from vlmlib.models import load_model

    sdpa = load_model("qwen2vl-random", device="cpu", attn_implementation="sdpa")
    with pytest.raises(RuntimeError, match="eager"):
        with Trace(sdpa, ["attn_weights.0"]):
            sdpa.forward(sdpa.encode_samples(samples[:1]))


@torch.no_grad()
def test_vision_tower_contributions_add_up(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    n = lm.num_vision_layers
    sites = [f"{k}.{layer}" for layer in range(n) for k in ("vision", "vision_attn", "vision_mlp")]
    with Trace(lm, sites) as trace:
        lm.forward(inputs)
    for layer in range(1, n):
        torch.testing.assert_close(
            trace[f"vision.{layer - 1}"] + trace[f"vision_attn.{layer}"] + trace[f"vision_mlp.{layer}"],
            trace[f"vision.{layer}"],
            rtol=1e-5,
            atol=1e-5,
        )


@torch.no_grad()
def test_read_gets_every_value_in_forward_order_and_keeps_none(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    sites = all_sites(lm) + ["vision_embed.0"]
    with Trace(lm, sites) as kept:
        lm.forward(inputs)
    got = []
    with Trace(lm, sites, read=lambda name, value: got.append((name, value.clone()))) as read:
        lm.forward(inputs)
    assert sorted(name for name, _ in got) == sorted(sites)  # each site once
    for name, value in got:
        assert torch.equal(value, kept[name]), name
    assert not read.outputs
    with pytest.raises(KeyError, match="read"):
        read["resid.0"]
    order = [name for name, _ in got]
    assert order.index("vision_embed.0") < order.index("vision.0") < order.index("embed.0")
    for layer in range(lm.num_layers):  # a layer's sublayers come before its output
        assert order.index(f"attn.{layer}") < order.index(f"mlp.{layer}") < order.index(f"resid.{layer}")


@torch.no_grad()
def test_vision_embed_is_the_input_of_a_vision_layer(lm, samples):
    inputs = lm.encode_samples(samples[:2])
    block = lm.model.get_submodule(lm.family.vision_layers)[0]
    seen = []
    handle = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True,
    )
    try:
        with Trace(lm, ["vision_embed.0", "vision_embed.1", "vision.0"]) as trace:
            lm.forward(inputs)
    finally:
        handle.remove()
    torch.testing.assert_close(trace["vision_embed.0"], seen[0], rtol=0, atol=0)
    torch.testing.assert_close(trace["vision_embed.1"], trace["vision.0"], rtol=0, atol=0)
    clean = lm.forward(inputs).logits
    with Trace(lm, ["vision_embed.0"], edit=lambda name, value: value * 0):
        assert not torch.allclose(lm.forward(inputs).logits, clean)
    with pytest.raises(IndexError, match="outside the model"):
        Trace(lm, [f"vision_embed.{lm.num_vision_layers}"])
