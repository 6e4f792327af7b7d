"""The observation engine against direct computations, one sample at a time, with no vlmlib hooks.

References come from transformers' own `output_hidden_states` / `output_attentions` (eager) and plain
forward hooks; nnsight gives an independent reading of one statistic per chapter.
"""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlmlib import Observation, load_model, observe, observe_batch, shapes_samples
from vlmlib.data import CAPTION_PROMPT
from vlmlib.observation import DEFAULT_READINGS, READINGS

MODALITIES = ("vision", "text")


@pytest.fixture(scope="module")
def mixed():
    """Prompts of three lengths, so that batches are right-padded."""
    questions = ["How many objects are in the image?", CAPTION_PROMPT, "How many ?"]
    return [
        dataclasses.replace(s, question=questions[i % 3]) for i, s in enumerate(shapes_samples(6, seed=7))
    ]


def n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _vision_children(block):
    attn = block.self_attn if hasattr(block, "self_attn") else block.attn
    return attn, block.mlp


@torch.no_grad()
def reference(lm, sample):
    """Every statistic of one sample, computed directly (batch of one, eager attention weights)."""
    inputs = lm.encode_samples([sample])
    layers = lm.model.get_submodule(lm.family.decoder_layers)
    vblocks = lm.model.get_submodule(lm.family.vision_layers)
    got = {}
    handles = [layers[-1].register_forward_hook(lambda m, a, out: got.__setitem__("last", out))]
    for i in range(len(layers)):
        handles.append(
            lm.family.site_module(lm.model, "attn", i).register_forward_hook(
                lambda m, a, out, i=i: got.__setitem__(("attn", i), out[0] if isinstance(out, tuple) else out)
            )
        )
        handles.append(
            lm.family.site_module(lm.model, "mlp", i).register_forward_hook(
                lambda m, a, out, i=i: got.__setitem__(("mlp", i), out)
            )
        )
    for i, block in enumerate(vblocks):
        attn, mlp = _vision_children(block)
        handles.append(
            block.register_forward_pre_hook(
                lambda m, a, kw, i=i: got.__setitem__(("vin", i), a[0] if a else kw["hidden_states"]),
                with_kwargs=True,
            )
        )
        handles.append(block.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(("vout", i), out)))
        handles.append(
            attn.register_forward_hook(
                lambda m, a, out, i=i: got.__setitem__(
                    ("vattn", i), out[0] if isinstance(out, tuple) else out
                )
            )
        )
        handles.append(mlp.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(("vmlp", i), out)))
    try:
        out = lm.forward(inputs, output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    hidden = [h[0].float() for h in out.hidden_states]
    hidden[-1] = got["last"][0].float()  # transformers' last hidden state is after the final norm
    vis = inputs["input_ids"][0] == lm.image_token_id
    masks = {"vision": vis, "text": ~vis}
    L = len(layers)
    r = {}
    for mod, mask in masks.items():
        r[f"decoder.norm.{mod}"] = [hidden[l][mask].norm(dim=-1).mean().item() for l in range(L + 1)]
        r[f"decoder.cosine.{mod}"] = [
            F.cosine_similarity(hidden[l][mask], hidden[l + 1][mask], dim=-1).mean().item() for l in range(L)
        ]
        r[f"decoder.update.{mod}"] = [
            (hidden[l + 1] - hidden[l])[mask].norm(dim=-1).mean().item() for l in range(L)
        ]
        an = [got[("attn", l)][0][mask].float().norm(dim=-1) for l in range(L)]
        mn = [got[("mlp", l)][0][mask].float().norm(dim=-1) for l in range(L)]
        r[f"decoder.attn_norm.{mod}"] = [a.mean().item() for a in an]
        r[f"decoder.mlp_norm.{mod}"] = [m.mean().item() for m in mn]
        r[f"decoder.attn_share.{mod}"] = [(a / (a + m)).mean().item() for a, m in zip(an, mn)]
    attn = [a[0].float().mean(0) for a in out.attentions]  # heads averaged, (T, T)
    r["decoder.last_attn.vision"] = [a[-1, vis].sum().item() for a in attn]
    r["decoder.last_attn.text"] = [a[-1, ~vis].sum().item() for a in attn]
    r["decoder.last_attn.first"] = [a[-1, 0].item() for a in attn]  # one sample: no padding before it
    n = vis.numel()
    for mod, mask in masks.items():  # mass over the modality's share of the keys, with and without key 0
        rest = mask.clone()
        rest[0] = False
        share, share_rest = mask.sum().item() / n, rest.sum().item() / (n - 1)
        r[f"decoder.last_attn_ratio.{mod}"] = [a[-1, mask].sum().item() / share for a in attn]
        r[f"decoder.last_attn_ratio_nosink.{mod}"] = [
            a[-1, rest].sum().item() / (1 - a[-1, 0].item()) / share_rest for a in attn
        ]
    for q, qm in (("v", vis), ("t", ~vis)):
        for k, km in (("v", vis), ("t", ~vis)):
            r[f"decoder.quadrant.{q}{k}"] = [a[qm][:, km].mean().item() for a in attn]
            r[f"decoder.quadrant_mass.{q}{k}"] = [a[qm][:, km].sum(1).mean().item() for a in attn]
    V = len(vblocks)
    vin = [got[("vin", i)].float() for i in range(V)]
    vout = [
        (got[("vout", i)][0] if isinstance(got[("vout", i)], tuple) else got[("vout", i)]).float()
        for i in range(V)
    ]
    van = [got[("vattn", i)].float().norm(dim=-1) for i in range(V)]
    vmn = [got[("vmlp", i)].float().norm(dim=-1) for i in range(V)]
    r["vision_tower.norm.all"] = [vin[0].norm(dim=-1).mean().item()] + [
        h.norm(dim=-1).mean().item() for h in vout
    ]
    r["vision_tower.cosine.all"] = [
        F.cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(vin, vout)
    ]
    r["vision_tower.update.all"] = [(b - a).norm(dim=-1).mean().item() for a, b in zip(vin, vout)]
    r["vision_tower.attn_norm.all"] = [a.mean().item() for a in van]
    r["vision_tower.mlp_norm.all"] = [m.mean().item() for m in vmn]
    r["vision_tower.attn_share.all"] = [(a / (a + m)).mean().item() for a, m in zip(van, vmn)]
    pooled = {mod: torch.stack([h[mask].mean(0) for h in hidden]).numpy() for mod, mask in masks.items()}
    identity = max(
        (hidden[l + 1] - hidden[l] - got[("attn", l)][0].float() - got[("mlp", l)][0].float())
        .abs()
        .max()
        .item()
        for l in range(L)
    )
    return {k: np.array(v) for k, v in r.items()}, pooled, identity


@pytest.fixture(scope="module")
def references(lm, mixed):
    rows = [reference(lm, s) for s in mixed]
    stats = {k: np.stack([r[0][k] for r in rows]) for k in rows[0][0]}  # (n, layers)
    pooled = {m: np.stack([r[1][m] for r in rows]) for m in MODALITIES}
    return stats, pooled, max(r[2] for r in rows)


def assert_matches(obs, stats, atol=1e-5):
    assert set(obs.stats) == set(stats), set(obs.stats) ^ set(stats)
    for name, values in stats.items():
        np.testing.assert_allclose(obs.mean(name), values.mean(0), rtol=1e-4, atol=atol, err_msg=name)
        np.testing.assert_allclose(obs.std(name), values.std(0, ddof=1), rtol=1e-3, atol=atol, err_msg=name)
        assert (obs.stats[name].count == len(values)).all(), name


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_every_statistic_equals_direct_computation(lm, mixed, references, attention):
    stats, pooled, _ = references
    inputs = lm.encode_samples(mixed[:4])
    assert not inputs["attention_mask"].all(), "the test batch should be padded"
    obs = observe(lm, mixed, readings=READINGS, batch_size=4, attention=attention, progress=False)
    assert obs.n_samples == len(mixed)
    assert_matches(obs, stats)
    for mod in MODALITIES:
        np.testing.assert_allclose(obs.pooled(mod), pooled[mod], rtol=1e-4, atol=1e-5)


def test_residual_identity(lm, mixed, references):
    _, _, identity = references
    assert identity < 1e-4  # H(l) = H(l-1) + attn + mlp, from output_hidden_states and the site table
    obs = observe(lm, mixed, readings=("contributions", "vision_tower"), batch_size=3, progress=False)
    assert obs.maxima["decoder.identity_error"] < 1e-5 * max(1.0, obs.maxima["decoder.max_abs_state"])
    assert obs.maxima["vision_tower.identity_error"] < 1e-5 * max(
        1.0, obs.maxima["vision_tower.max_abs_state"]
    )


def test_batch_size_1_and_8_agree(lm, mixed):
    samples = (mixed * 2)[:8]
    one = observe(lm, samples, readings=READINGS, batch_size=1, progress=False)
    eight = observe(lm, samples, readings=READINGS, batch_size=8, progress=False)
    for name in one.stats:
        np.testing.assert_allclose(one.mean(name), eight.mean(name), rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(one.std(name), eight.std(name), rtol=1e-3, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(one.pooled("vision"), eight.pooled("vision"), rtol=1e-5, atol=1e-6)


def test_merging_halves_equals_the_whole(lm, mixed):
    whole = observe(lm, mixed, readings=READINGS, batch_size=3, progress=False)
    first = observe(lm, mixed[:3], readings=READINGS, batch_size=3, progress=False)
    second = observe(lm, mixed[3:], readings=READINGS, batch_size=3, progress=False)
    merged = first.merge(second)
    assert merged.n_samples == whole.n_samples == len(mixed)
    for name, m in whole.stats.items():
        np.testing.assert_allclose(merged.stats[name].sum, m.sum, rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(merged.stats[name].sumsq, m.sumsq, rtol=1e-12, err_msg=name)
        np.testing.assert_array_equal(merged.stats[name].count, m.count)
    np.testing.assert_array_equal(merged.pooled("text"), whole.pooled("text"))
    # merging does not alter its operands
    np.testing.assert_array_equal(first.stats["decoder.cosine.vision"].count, 3)


def test_memory_does_not_grow_with_samples(lm, mixed):
    small = observe(lm, mixed[:2], batch_size=2, progress=False)
    large = observe(lm, mixed, batch_size=2, progress=False)
    assert {k: m.sum.shape for k, m in small.stats.items()} == {
        k: m.sum.shape for k, m in large.stats.items()
    }
    assert not large.features  # pooled features are opt-in


def test_prefix_lm_mask_is_in_effect(lm, mixed):
    """PaliGemma's image tokens see the question after them only through the prefix-LM mask."""
    if lm.family.name != "paligemma":
        pytest.skip("a prefix-LM mask is PaliGemma's")
    inputs = lm.encode_samples(mixed[:3])
    assert "token_type_ids" in inputs
    with_mask = observe_batch(lm, inputs, ("attention",))
    assert (with_mask.mean("decoder.quadrant_mass.vt") > 0.01).all()
    causal = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    without = observe_batch(lm, causal, ("attention",))
    np.testing.assert_allclose(without.mean("decoder.quadrant_mass.vt"), 0.0, atol=1e-7)


def test_hooks_removed_and_attention_restored(lm, mixed):
    before_hooks = n_hooks(lm.model)
    before_impl = lm.model.config.text_config._attn_implementation
    inputs = lm.encode_samples(mixed[:2])
    observe_batch(lm, inputs, READINGS)
    assert n_hooks(lm.model) == before_hooks
    assert lm.model.config.text_config._attn_implementation == before_impl
    broken = dict(inputs)
    broken["pixel_values"] = broken["pixel_values"][..., :3]  # wrong shape: the forward pass fails
    with pytest.raises(Exception):
        observe_batch(lm, broken, READINGS)
    assert n_hooks(lm.model) == before_hooks
    assert lm.model.config.text_config._attn_implementation == before_impl
    layers = lm.model.get_submodule(lm.family.decoder_layers)
    assert not any(hasattr(layer.self_attn, "_vlmlib_reader") for layer in layers)


def test_unknown_reading_is_refused(lm, mixed):
    with pytest.raises(ValueError, match="unknown readings"):
        observe(lm, mixed[:1], readings=("cosine", "cosines"), progress=False)
    assert set(DEFAULT_READINGS) <= set(READINGS)


def test_moments_spread_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 5))
    values[3, 2] = np.nan  # a sample without a value in one cell
    obs = Observation()
    obs.add("x", values[:7])
    other = Observation()
    other.add("x", values[7:])
    merged = obs.merge(other)
    np.testing.assert_allclose(merged.mean("x"), np.nanmean(values, 0))
    np.testing.assert_allclose(merged.std("x"), np.nanstd(values, 0, ddof=1))
    np.testing.assert_array_equal(merged.stats["x"].count, np.isfinite(values).sum(0))


@pytest.mark.parametrize("name", ["paligemma-random", "qwen2vl-random"])
@torch.no_grad()
def test_nnsight_agrees_on_one_statistic_per_chapter(name, mixed):
    """Chapter 1 (cosine), 2 (attention norm), 4 (final-token vision mass), 6 (update), read by nnsight."""
    from nnsight import NNsight

    lm = load_model(name, device="cpu", dtype="float32", attn_implementation="eager")
    samples = mixed[:2]
    obs = observe(
        lm, samples, readings=("cosine", "update", "contributions", "attention"), batch_size=2, progress=False
    )
    net = NNsight(lm.model)
    layers = net.model.language_model.layers
    per_sample = {"cos": [], "attn": [], "last": [], "update": []}
    for sample in samples:
        inputs = lm.encode_samples([sample])
        vis = inputs["input_ids"][0] == lm.image_token_id
        saved = []
        with net.trace(**inputs, use_cache=False):
            first_in = layers[0].inputs.save()
            for layer in layers:
                saved.append((layer.self_attn.output.save(), layer.output.save()))
        h = [first_in[1]["hidden_states"][0] if not first_in[0] else first_in[0][0][0]]
        h += [out[0] for _, out in saved]
        per_sample["cos"].append(
            [
                F.cosine_similarity(h[l][vis], h[l + 1][vis], dim=-1).mean().item()
                for l in range(lm.num_layers)
            ]
        )
        per_sample["update"].append(
            [(h[l + 1] - h[l])[vis].norm(dim=-1).mean().item() for l in range(lm.num_layers)]
        )
        per_sample["attn"].append([a[0][0][~vis].norm(dim=-1).mean().item() for a, _ in saved])
        per_sample["last"].append([a[1][0].mean(0)[-1, vis].sum().item() for a, _ in saved])
    for key, stat in (
        ("cos", "decoder.cosine.vision"),
        ("update", "decoder.update.vision"),
        ("attn", "decoder.attn_norm.text"),
        ("last", "decoder.last_attn.vision"),
    ):
        np.testing.assert_allclose(
            obs.mean(stat), np.mean(per_sample[key], 0), rtol=1e-4, atol=1e-5, err_msg=stat
        )


# ---------------------------------------------------------------- memory at full size


def test_observation_pass_computes_no_logits(lm, mixed):
    """No reading needs logits: the LM head never runs, and the readings are those of the full
    forward pass (the engine's path before it skipped the head)."""
    calls = []
    handle = lm.model.lm_head.register_forward_hook(lambda m, a, out: calls.append(tuple(out.shape)))
    try:
        obs = observe(lm, mixed, readings=READINGS, batch_size=3, progress=False)
    finally:
        handle.remove()
    assert calls == []
    full_forward = dataclasses.replace(lm)
    full_forward.forward_base = lm.forward  # the whole model, LM head included
    head_calls = []
    handle = lm.model.lm_head.register_forward_hook(lambda m, a, out: head_calls.append(out.shape[-1]))
    try:
        before = observe(full_forward, mixed, readings=READINGS, batch_size=3, progress=False)
    finally:
        handle.remove()
    # the check can see it
    assert head_calls and head_calls[0] == lm.model.config.get_text_config().vocab_size
    for name in before.stats:
        np.testing.assert_array_equal(obs.stats[name].sum, before.stats[name].sum, err_msg=name)
    np.testing.assert_array_equal(obs.pooled("vision"), before.pooled("vision"))


def test_token_budget_splits_batches_without_changing_readings(lm, mixed):
    length = lm.encode_samples(mixed[:1])["input_ids"].shape[1]
    passes = []
    real = lm.forward_base
    budgeted = dataclasses.replace(lm)
    budgeted.forward_base = lambda inputs, **kw: (
        passes.append(tuple(inputs["input_ids"].shape)),
        real(inputs, **kw),
    )[1]
    # room for two rows of the longest prompt, not for three: a batch of 6 runs as 2 + 1 + 2 + 1
    split = observe(
        budgeted, mixed, readings=READINGS, batch_size=6, progress=False, max_tokens_per_batch=2 * length + 1
    )
    assert [rows for rows, _ in passes] == [1, 2, 1, 2], passes
    assert all(rows * t <= 2 * length + 1 for rows, t in passes)
    whole = observe(lm, mixed, readings=READINGS, batch_size=6, progress=False, max_tokens_per_batch=None)
    for name in whole.stats:
        np.testing.assert_allclose(split.mean(name), whole.mean(name), rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(split.stats[name].count, whole.stats[name].count)
    np.testing.assert_allclose(split.pooled("text"), whole.pooled("text"), rtol=1e-5, atol=1e-6)  # order kept
    one = observe(
        budgeted, mixed[:1], readings=("cosine",), batch_size=1, progress=False, max_tokens_per_batch=1
    )
    assert one.n_samples == 1  # a sample longer than the budget still runs, alone
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        observe(lm, mixed, max_tokens_per_batch=0, progress=False)


# ---------------------------------------------------------------- switching the decoder's attention


@torch.no_grad()
def test_attention_switch_after_the_first_is_one_assignment_and_takes_effect(lm, mixed, monkeypatch):
    """`decoder_attention` checks an implementation with transformers once per model; later switches
    set the config field only, and the decoder then really runs that implementation."""
    from vlmlib.observation import ATTENTION_FUNCTION, decoder_attention

    inputs = lm.encode_samples(mixed[:2])
    before = lm.model.config.text_config._attn_implementation
    other = "sdpa" if before == "eager" else "eager"
    with decoder_attention(lm, other):  # the first switch of this model to `other` may be the checked one
        pass
    calls = []
    real = lm.model.set_attn_implementation
    monkeypatch.setattr(lm.model, "set_attn_implementation", lambda *a, **k: (calls.append(a), real(*a, **k)))
    for _ in range(2):
        with decoder_attention(lm, other):
            assert lm.model.config.text_config._attn_implementation == other
            weights = [
                w for w in lm.forward(inputs, output_attentions=True).attentions or () if w is not None
            ]
            assert bool(weights) == (other == "eager")  # eager computes weights, SDPA none
        assert lm.model.config.text_config._attn_implementation == before
    assert calls == []
    # the mass-reading attention outside an observation pass: SDPA's output, bit for bit, and no weights
    with decoder_attention(lm, "sdpa"):
        plain = lm.forward(inputs).logits
    with decoder_attention(lm, ATTENTION_FUNCTION):
        out = lm.forward(inputs, output_attentions=True)
    assert torch.equal(out.logits, plain)
    assert not [w for w in out.attentions or () if w is not None]


def test_softcapped_attention_applies_the_mask():
    """Gemma 2 softcaps its scores, which SDPA cannot: the engine's attention computes them eagerly,
    from the boolean mask SDPA takes (True: attend), and masked keys get no weight."""
    import transformers.models.gemma2.modeling_gemma2  # noqa: F401

    from vlmlib.observation import KeyModalities, observe_attention, reading_masses

    class Attention(torch.nn.Module):  # eager_attention_forward is looked up in the module's module
        pass

    Attention.__module__ = "transformers.models.gemma2.modeling_gemma2"
    module = Attention()
    module.num_key_value_groups, module.head_dim = 1, 8
    torch.manual_seed(0)
    b, heads, T = 2, 2, 5
    q, k, v = (torch.randn(b, heads, T, 8) for _ in range(3))
    mask = torch.ones(b, 1, T, T, dtype=torch.bool).tril()
    mask[1, ..., 3:] = False  # the second row is padded after 3 tokens
    indicators = torch.zeros(b, T, 2)
    indicators[:, :2, 0], indicators[:, 2:, 1] = 1, 1
    with reading_masses(KeyModalities(indicators)):
        out, masses = observe_attention(module, q, k, v, mask, scaling=8**-0.5, softcap=50.0)
    scores = torch.tanh(q @ k.transpose(-1, -2) * 8**-0.5 / 50.0) * 50.0
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    torch.testing.assert_close(out, (weights @ v).transpose(1, 2))
    torch.testing.assert_close(masses, torch.einsum("bhqk,bkc->bqhc", weights, indicators))
